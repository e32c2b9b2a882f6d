-- The BigQuery ML image walk-through in SQL only, with sqlvision (DuckDB).
-- Run from a folder holding photos/ (class folders of JPEGs) and the model files (README.md):
--   sqlvision sql --db bq.duckdb --file walkthrough.sql

-- 1. An object table: one row per photo with its uri and metadata; the bytes stay in the files
--    and are read when a model needs them.
CREATE OR REPLACE EXTERNAL TABLE photos
  OPTIONS (uris = ['photos'], object_metadata = 'SIMPLE');

SELECT uri, label, width, height, size_bytes
FROM photos WHERE uri LIKE '%/shoes/%' ORDER BY uri LIMIT 3;

-- 2. The model: a pretrained ImageNet classifier as an ONNX file and its class names
--    (BigQuery's model_type = 'TENSORFLOW', model_path = 'gs://...').
CREATE OR REPLACE MODEL imagenet
  OPTIONS (model_type = 'onnx', model_path = 'imagenet.onnx', labels = 'imagenet-labels.txt',
           image_size = 224, mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5]);

-- its schema tab: what it takes and what it gives
SELECT name, version, architecture, json_array_length(classes) AS classes FROM ML.MODELS;

-- 3. Infer one photo.
SELECT uri, predicted_label, round(confidence, 3) AS confidence
FROM ML.PREDICT(MODEL imagenet,
  (SELECT id, uri FROM photos WHERE uri LIKE '%/shoes/%' ORDER BY uri LIMIT 1));

-- 4. Flatten its top 5 with UNNEST.
SELECT p.uri, t.entry.label AS label, round(t.entry.probability, 3) AS score
FROM ML.PREDICT(MODEL imagenet,
       (SELECT id, uri FROM photos WHERE uri LIKE '%/shoes/%' ORDER BY uri LIMIT 1),
       STRUCT(5 AS top_k)) AS p,
     UNNEST(p.top_k) AS t(entry)
ORDER BY score DESC;

-- 5. Structured data next to the images: care instructions per clothing category,
--    joined with the photos' predictions.
CREATE OR REPLACE TABLE care (category VARCHAR PRIMARY KEY, washing VARCHAR, drying VARCHAR);
INSERT INTO care VALUES
  ('dress', '30 C gentle', 'hang'), ('hat', 'hand wash', 'flat'),
  ('longsleeve', '40 C', 'tumble low'), ('outwear', '30 C', 'hang'),
  ('pants', '40 C', 'tumble low'), ('shirt', '40 C', 'hang'), ('shoes', 'wipe clean', 'air'),
  ('shorts', '40 C', 'tumble low'), ('skirt', '30 C gentle', 'hang'), ('t-shirt', '40 C', 'tumble');

SELECT p.label AS category, c.washing, p.predicted_label, count(*) AS photos
FROM ML.PREDICT(MODEL imagenet, (SELECT id, uri, label FROM photos)) AS p
JOIN care AS c ON c.category = p.label
GROUP BY p.label, c.washing, p.predicted_label
QUALIFY row_number() OVER (PARTITION BY p.label ORDER BY count(*) DESC) = 1
ORDER BY category;
