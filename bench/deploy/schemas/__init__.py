"""JSON Schemas (draft 2020-12) of the runner contract: job.v1.schema.json, result.v1.schema.json (package data)."""
