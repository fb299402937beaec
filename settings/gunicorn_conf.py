"""gunicorn's bounds on what a request may carry before Django reads it. Every way the web tier starts (Procfile,
Dockerfile, Kubernetes, compose, the benchmarks) passes `--config settings/gunicorn_conf.py`; a request beyond
them is answered 414 or 431 by gunicorn and never reaches the application.

Django bounds the rest: DATA_UPLOAD_MAX_NUMBER_FIELDS (form fields), DATA_UPLOAD_MAX_MEMORY_SIZE and
API_MAX_BODY_BYTES (bodies), and the API's schemas (the fields of a JSON body).
"""

import os

#: Bytes of the request line (method, path and query string).
limit_request_line = int(os.environ.get("WEB_LIMIT_REQUEST_LINE", "4094"))
#: Header fields of one request (a browser sends about 15; an API client fewer).
limit_request_fields = int(os.environ.get("WEB_LIMIT_REQUEST_FIELDS", "50"))
#: Bytes of one header field, name and value (the admin's session and CSRF cookies fit with room to spare).
limit_request_field_size = int(os.environ.get("WEB_LIMIT_REQUEST_FIELD_SIZE", "8190"))
