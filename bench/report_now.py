"""pytest plugin for bench/gpu_suite.sh (`-p bench.report_now`): print each failure with
its short traceback the moment it happens. pytest prints tracebacks only in its final
summary, so a test stage killed by its timeout would otherwise lose every failure detail."""
import sys

import pytest

_config = None


def pytest_configure(config):
    global _config
    _config = config


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report):
    terminal = _config and _config.pluginmanager.get_plugin("terminalreporter")
    if not report.failed or terminal is None:
        return
    terminal.write_line("")
    terminal.write_line(f"FAILED NOW {report.nodeid} ({report.when})", red=True, bold=True)
    terminal.write_line(report.longreprtext)
    terminal.flush()
    sys.stdout.flush()  # a kill may follow at any moment
