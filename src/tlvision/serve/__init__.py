"""`tlvision serve`: a trained run behind FastAPI on uvicorn, with a web page.

Needs the `serve` extra (fastapi, uvicorn, python-multipart). Modules: config (what was asked,
decided before binding), batching (concurrent requests into one model call), uploads (safe
decoding), error_handlers (every refusal as 4xx JSON), app (the endpoints), server (start-up).

Imports training and below (in practice inference, export, runs, data); not advisor or report.
"""
