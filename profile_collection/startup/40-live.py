"""Live analysis of every run, results into the same Tiled store (when installed)."""
try:
    from txm_live.callbacks import subscribe_live_analysis
except ImportError:
    live_analysis = None
else:
    # Analysis documents share the raw run's writer (one writer per catalog).
    live_analysis = subscribe_live_analysis(
        RE, tiled_client, preview_dir=DATA_DIR / "previews", writer=tiled_writer  # noqa: F821
    )
