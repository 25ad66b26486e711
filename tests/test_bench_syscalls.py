"""`stagecast bench syscalls`, small: the C floor builds and runs, every figure is there."""

from __future__ import annotations

from pathlib import Path

import pytest

from stagecast.bench import syscalls
from stagecast.cli import BENCH_SUITES, bench_options

FIGURES = {
    "tcp_send_us",
    "tcp_send_woken_us",
    "py_socket_send_us",
    "asyncio_write_us",
    "asyncio_write_vs_kernel",
    "udp_sendto_us",
    "udp_send_connected_us",
    "udp_sendmmsg_us",
    "udp_sendmmsg_vs_sendto",
}


@pytest.mark.timeout(120)
async def test_small_syscalls_bench_reports_every_figure() -> None:
    assert "syscalls" in BENCH_SUITES
    module, args = bench_options("syscalls", ["--sockets", "40", "--legs", "8", "--rounds", "3"])
    assert module is syscalls
    results = {r.name: r.value for r in await syscalls.run(args)}
    assert set(results) == FIGURES
    assert all(value > 0 for value in results.values()), results
    ratio = results["asyncio_write_us"] / results["tcp_send_us"]
    assert results["asyncio_write_vs_kernel"] == pytest.approx(ratio)
    ratio = results["udp_sendmmsg_us"] / results["udp_sendto_us"]
    assert results["udp_sendmmsg_vs_sendto"] == pytest.approx(ratio)


def test_the_c_source_ships_with_the_package() -> None:
    assert syscalls.SOURCE.is_file() and syscalls.SOURCE.suffix == ".c"


def test_without_a_compiler_the_suite_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    with pytest.raises(syscalls.NoCompiler, match="no C compiler"):
        syscalls.compile_floor(tmp_path)


async def test_a_count_below_one_is_refused() -> None:
    _module, args = bench_options("syscalls", ["--rounds", "0"])
    with pytest.raises(ValueError, match="--rounds must be positive"):
        await syscalls.run(args)
