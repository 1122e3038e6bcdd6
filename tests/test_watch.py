"""The polling watcher sees writes, atomic replacements and Kubernetes-style symlink swaps."""

from __future__ import annotations

import asyncio

from intercept_proxy.watch import watch


async def changes_after(paths, action) -> int:
    calls = []
    task = asyncio.create_task(watch(lambda: paths, lambda: calls.append(1), interval_s=0.02))
    await asyncio.sleep(0.05)
    action()
    await asyncio.sleep(0.2)
    task.cancel()
    return len(calls)


def test_write_replace_and_symlink_swap(tmp_path):
    target = tmp_path / "p.yaml"
    target.write_text("a")
    assert asyncio.run(changes_after([target], lambda: target.write_text("bb"))) == 1

    def replace():
        tmp = tmp_path / "new"
        tmp.write_text("cc")
        tmp.replace(target)

    assert asyncio.run(changes_after([target], replace)) == 1

    # A downwardAPI/ConfigMap volume: file -> ..data/file, ..data -> ..timestamp dir.
    for d in ("v1", "v2"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "f").write_text(d)
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "f").symlink_to("..data/f")

    def swap():
        (tmp_path / "..data_tmp").symlink_to("v2")
        (tmp_path / "..data_tmp").replace(tmp_path / "..data")

    assert asyncio.run(changes_after([tmp_path / "f"], swap)) == 1
    assert asyncio.run(changes_after([tmp_path / "f"], lambda: None)) == 0


def test_files_that_appear_or_vanish(tmp_path):
    path = tmp_path / "later"
    assert asyncio.run(changes_after([path], lambda: path.write_text("x"))) == 1
    assert asyncio.run(changes_after([path], path.unlink)) == 1


def test_a_failing_reaction_does_not_stop_the_watch(tmp_path):
    path = tmp_path / "f"
    path.write_text("a")
    calls = []

    def react():
        calls.append(1)
        raise RuntimeError("boom")

    async def scenario():
        task = asyncio.create_task(watch(lambda: [path], react, interval_s=0.02))
        for text in ("b", "cc"):
            await asyncio.sleep(0.1)
            path.write_text(text)
        await asyncio.sleep(0.1)
        assert not task.done()
        task.cancel()

    asyncio.run(scenario())
    assert len(calls) == 2
