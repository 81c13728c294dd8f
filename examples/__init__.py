"""Example domains built only with the Grace SDK (`services.sdk`).

Run each with `python -m examples.<name>`: `data_domain` (port 8200), `memory_domain`
(8201) and `ai_domain` (8202). Together they run the seeds' `process_document` workflow
(ingest -> analyze -> store) and the "Analyze this code" scenario (search_similar ->
analyze).
"""
