"""The device's web page in a real headless Chromium (Debian's chromium + chromedriver,
driven by Selenium): status, drag-and-drop upload, activate, delete, recordings, errors.

``MORPHBOX_SCREENSHOT=PATH`` also saves the page as PATH (docs/web-page.png is made so).
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from morphbox.device.api.server import ApiServer
from morphbox.device.packs.store import PackStore
from morphbox.device.service import Service, ServiceConfig
from tests.device.test_archive import archive_of, new_key, public_raw, small_pack

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--window-size=1100,900"]

DROP_JS = """
const [b64, name, done] = arguments;
const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
const dt = new DataTransfer();
dt.items.add(new File([bytes], name, {type: "application/octet-stream"}));
const zone = document.getElementById("drop");
zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true,
                                              cancelable: true}));
zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
done();
"""


@pytest.fixture
def browser(tmp_path, skip_or_fail):
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not chromium or not driver_bin:
        skip_or_fail("chromium and chromium-driver are not installed "
                     "(apt-get install -y chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service as DriverService
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=DriverService(executable_path=driver_bin), options=opts)
    drv.set_script_timeout(20)
    yield drv
    drv.quit()


@pytest.fixture
def box(tmp_path):
    key = new_key()
    store = PackStore(tmp_path / "state")
    store.add_key(public_raw(key))
    old = store.install_file(archive_of(small_pack(tmp_path / "warm", "warm", 150), key))
    store.activate(old)
    (store.recordings_dir / "20250102-093000.wav").write_bytes(b"RIFF" + bytes(2000))
    service = Service(ServiceConfig(pack=store.startup()[1].path, audio="none"))
    server = ApiServer(service, store, "127.0.0.1", 0)
    service.add(server)
    service.start()
    yield {"service": service, "store": store, "url": server.url, "old": old,
           "new": archive_of(small_pack(tmp_path / "bright", "bright", 210), key)}
    service.stop()


def _drop(drv, path: Path):
    drv.execute_async_script(DROP_JS, base64.b64encode(path.read_bytes()).decode(), path.name)


def _click(drv, selector: str) -> bool:
    """Click in one script call (the table is redrawn every 2 s); True if it was there."""
    return drv.execute_script(
        "const b = document.querySelector(arguments[0]); if (b) b.click(); return !!b",
        selector)


def test_page_flow_in_headless_chromium(browser, box):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    drv, service = browser, box["service"]
    wait = WebDriverWait(drv, 15)
    drv.get(box["url"] + "/")
    wait.until(lambda d: "warm" in d.find_element(By.ID, "st-pack").text)
    assert "warm-inst0" in drv.find_element(By.ID, "st-corners").text
    assert "0 errors" in drv.find_element(By.ID, "st-audio").text
    ids = drv.execute_script(
        "return [...document.querySelectorAll('#packs tbody tr')].map(r => r.dataset.id)")
    assert ids == ["builtin", box["old"]]

    # no token yet: the recordings are not listed, and the drop is refused with the device's
    # message
    assert "enter the pairing token" in drv.find_element(By.ID, "recordings").text
    _drop(drv, box["new"])
    wait.until(lambda d: "missing pairing token" in d.find_element(By.ID, "message").text)
    assert service.engine.grid.name == "warm"

    token = drv.find_element(By.ID, "token")
    token.send_keys(box["store"].token)
    drv.execute_script("arguments[0].dispatchEvent(new Event('change'))", token)
    _drop(drv, box["new"])
    wait.until(lambda d: "installed and playing" in d.find_element(By.ID, "message").text)
    assert service.engine.grid.name == "bright" and service.pack.name == "bright"
    wait.until(lambda d: "bright" in d.find_element(By.ID, "st-pack").text)
    bright = wait.until(lambda d: d.execute_script(
        "const r = document.querySelector('#packs tr.active'); return r && r.dataset.id"))
    assert bright.startswith("bright-")

    # activate the old pack again from its row
    _click(drv, f"#packs tr[data-id='{box['old']}'] button.activate")
    wait.until(lambda d: "warm is playing" in d.find_element(By.ID, "message").text)
    assert service.engine.grid.name == "warm"

    # recordings (token entered above): listed, and the page's download fetches the file with
    # the token (without it the device answers 401)
    name = wait.until(lambda d: d.execute_script(
        "const a = document.querySelector('#recordings a'); return a && a.dataset.name"))
    assert name == "20250102-093000.wav"
    size = drv.execute_async_script(
        "recordingBlob(arguments[0]).then(b => arguments[1](b.size))", name)
    assert size == 2004
    status = drv.execute_async_script(
        "fetch('/api/recordings/' + arguments[0]).then(r => arguments[1](r.status))", name)
    assert status == 401

    shot = os.environ.get("MORPHBOX_SCREENSHOT")
    if shot:
        drv.find_element(By.ID, "message").click()
        drv.save_screenshot(shot)

    # delete the bright pack
    wait.until(lambda d: _click(d, f"#packs tr[data-id='{bright}'] button.delete"))
    wait.until(lambda d: "deleted" in d.find_element(By.ID, "message").text)
    assert not (box["store"].packs_dir / bright).exists()
    assert service.engine.grid.name == "warm"
