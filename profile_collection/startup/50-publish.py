"""Documents over 0MQ for analysis in another process (`txm-live serve-analysis`); optional.

Environment:
  TXM_LIVE_ZMQ_PUBLISH   host:port of a 0MQ proxy's input, e.g. 127.0.0.1:5577 (a proxy
                         started with `txm-live zmq-proxy`): every document is published
                         there (msgpack; never pickle)
  TXM_LIVE_ZMQ_PROXY     IN:OUT ports, e.g. 5577:5578: start the proxy inside this session
                         (127.0.0.1 only) and publish to it
  TXM_LIVE_ANALYSIS      'local' (default): the live analysis runs in this process;
                         'remote': it does not (a `txm-live serve-analysis` does)
"""
import os

from txm_live.remote import DocumentPublisher, ZmqProxy

zmq_proxy = None
zmq_publisher = None
_proxy_ports = os.environ.get("TXM_LIVE_ZMQ_PROXY")
_publish_to = os.environ.get("TXM_LIVE_ZMQ_PUBLISH")
if _proxy_ports:
    _in, _sep, _out = _proxy_ports.partition(":")
    if not (_sep and _in.isdigit() and _out.isdigit()):
        raise ValueError(f"TXM_LIVE_ZMQ_PROXY must be IN:OUT ports, e.g. 5577:5578; got {_proxy_ports!r}")
    zmq_proxy = ZmqProxy(int(_in), int(_out)).start()
    _publish_to = _publish_to or f"127.0.0.1:{zmq_proxy.in_port}"
    print(f"txm-live: 0MQ proxy in this session: publishers -> {zmq_proxy.in_address}, "
          f"subscribers -> {zmq_proxy.out_address}")
if _publish_to:
    zmq_publisher = DocumentPublisher(_publish_to)
    zmq_publisher.token = RE.subscribe(zmq_publisher)  # noqa: F821 (00-base.py)
    print(f"txm-live: publishing documents to {zmq_publisher.address} (0MQ, msgpack)")

_analysis_mode = os.environ.get("TXM_LIVE_ANALYSIS", "local")
if _analysis_mode not in ("local", "remote"):
    raise ValueError(f"TXM_LIVE_ANALYSIS must be 'local' or 'remote', got {_analysis_mode!r}")
if _analysis_mode == "remote":
    if zmq_publisher is None:
        raise ValueError("TXM_LIVE_ANALYSIS=remote needs TXM_LIVE_ZMQ_PUBLISH or TXM_LIVE_ZMQ_PROXY: "
                         "the analysis process reads the documents published over 0MQ")
    if live_analysis is not None:  # noqa: F821 (40-live.py)
        live_analysis.close(RE)  # noqa: F821
        live_analysis = None
    print("txm-live: live analysis runs in another process (txm-live serve-analysis)")
