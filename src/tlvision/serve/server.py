"""Start-up: check the configuration, load the model, say who may call, then listen."""

from __future__ import annotations

import sys

from tlvision.checkpoint import read_model_json
from tlvision.errors import UserError
from tlvision.serve.config import ServeConfig, startup_lines, validate_config


def run_server(config: ServeConfig) -> None:
    """Serve until interrupted. Everything that can be refused is refused before binding."""
    validate_config(config)
    try:
        import uvicorn

        from tlvision.serve.app import create_app
    except ImportError as error:
        raise UserError(
            f"tlvision serve needs the serve extra ({error.name} is missing): "
            "pip install 'tlvision[serve]'"
        ) from error
    from tlvision.class_maps import open_class_mapper
    from tlvision.runtime import open_classifier

    metadata = read_model_json(config.run_dir)
    classifier = open_classifier(config.run_dir, config.runtime)
    app = create_app(classifier, open_class_mapper(config.run_dir), config, metadata)
    for line in startup_lines(config, classifier.runtime):
        print(line, file=sys.stderr, flush=True)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        access_log=config.access_log,
        timeout_graceful_shutdown=5,
    )
