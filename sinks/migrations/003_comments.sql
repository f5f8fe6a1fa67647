-- cxpulse ClickHouse schema, version 3: what customers say (docs/contract.md section 9).  Applied like 001.
-- Statements are separated by a line holding only ";".

-- The themes each counted answer's comment mentions (the taxonomy's names, "(any)" left out: an answer with a
-- non-empty comment is "(any)"), as the hot path read them; `comment` already holds the redacted text.
ALTER TABLE cxpulse.answers ADD COLUMN IF NOT EXISTS themes Array(LowCardinality(String)) DEFAULT [] AFTER comment
