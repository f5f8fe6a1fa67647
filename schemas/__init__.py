"""Avro schemas of cxpulse and the codec around fastavro."""
