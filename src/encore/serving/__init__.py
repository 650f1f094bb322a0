"""The HTTP service around the models: its contract and error shape (``api``), who may call it
(``access``), versions loaded, resolved and split between aliases (``versions``), audio uploads
read within bounds (``uploads``) and its metrics (``telemetry``). ``serve_apps/app.py`` wires these
into one Ray Serve application."""
