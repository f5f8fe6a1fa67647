-- cxpulse ClickHouse schema, version 4: which answers had a comment (docs/contract.md section 9).  Applied like 001.
-- Statements are separated by a line holding only ";".

-- 1 when the answer's comment has a word: the answer counts under the theme "(any)" (its `themes` leave "(any)" out).
-- Under CXPULSE_COMMENTS=themes the text is dropped but this is kept, so the share of commented answers that mention a
-- theme still comes from the store.  Answers stored before this version read 0.
ALTER TABLE cxpulse.answers ADD COLUMN IF NOT EXISTS commented UInt8 DEFAULT 0 AFTER themes
