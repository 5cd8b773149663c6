"""The dashboard in a real headless Chromium against `bess-edge demo`: log in, live values that change, a
websocket update, an order placed and seen in active orders, the theme toggle, a phone-sized viewport.
Screenshots are saved under artifacts/browser/."""

from __future__ import annotations

import pytest

from tests.fixtures.browser import demo_url, page  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(240)


async def login(page, base: str) -> None:
    await page.goto(base + "/")
    await page.wait_for("location.pathname === '/login'", what="redirect to the login page")
    await page.js(
        "document.getElementById('api-key').value = 'demo';document.getElementById('login-form').requestSubmit(); true"
    )
    await page.wait_for("location.pathname === '/' && !!document.getElementById('soc-value')", what="dashboard")


async def test_login_live_values_and_websocket(page, demo_url):
    await page.goto(demo_url + "/login")
    await page.js(
        "document.getElementById('api-key').value = 'wrong-key';"
        "document.getElementById('login-form').requestSubmit(); true"
    )
    await page.wait_for("document.getElementById('login-error').textContent.trim().length > 0", what="login error")
    await page.screenshot("login-refused")
    await login(page, demo_url)
    state = await page.wait_for(
        "document.getElementById('conn-state').dataset.state === 'live' && 'live'",
        timeout_s=30,
        what="websocket connection",
    )
    assert state == "live"
    soc = await page.wait_for("document.getElementById('soc-value').dataset.value", timeout_s=30, what="SoC value")
    assert 0 < float(soc) < 100
    await page.wait_for("document.getElementById('status-value').textContent.includes('online')", timeout_s=30)
    temp = float(await page.js("document.getElementById('temperature-value').dataset.value"))
    assert -40 < temp < 80
    # the status clock moves with every websocket push
    first = await page.js("document.getElementById('last-update').textContent")
    await page.wait_for(
        f"document.getElementById('last-update').textContent !== {first!r}", timeout_s=15, what="a websocket update"
    )
    await page.screenshot("dashboard-dark")
    assert not page.console, page.console


async def test_order_theme_and_phone(page, demo_url):
    await login(page, demo_url)
    await page.wait_for("document.querySelectorAll('#order-delivery option').length > 1", what="delivery periods")
    # a sell far above the market rests on the book as an active order
    await page.js("""(() => {
        document.getElementById('order-side-sell').click();
        document.getElementById('order-quantity').value = '1';
        document.getElementById('order-price').value = '9999';
        const sel = document.getElementById('order-delivery');
        sel.selectedIndex = Math.min(4, sel.options.length - 1);
        for (const id of ['order-quantity', 'order-price', 'order-delivery'])
            document.getElementById(id).dispatchEvent(new Event('input', {bubbles: true}));
        return true; })()""")
    await page.wait_for(
        "document.getElementById('order-check').dataset.ok === 'true'",
        timeout_s=15,
        what="the pre-trade check's answer",
    )
    await page.js("document.getElementById('order-form').requestSubmit(); true")
    await page.wait_for(
        "document.getElementById('order-result').dataset.ok === 'true'", timeout_s=20, what="the order accepted"
    )
    # this order's row (the demo's own orders may be listed too)
    await page.wait_for(
        "[...document.querySelectorAll('#orders-table tr[data-testid=\"order-row\"]')]"
        ".some((tr) => tr.textContent.includes('9999.00'))",
        timeout_s=20,
        what="the order in active orders",
    )
    await page.screenshot("order-placed")
    # an order the battery cannot deliver is refused inline with the reason
    await page.js("""(() => {
        document.getElementById('order-quantity').value = '9000';
        document.getElementById('order-quantity').dispatchEvent(new Event('input', {bubbles: true}));
        return true; })()""")
    await page.wait_for(
        "document.getElementById('order-check').dataset.ok === 'false'",
        timeout_s=15,
        what="the pre-trade check refusing",
    )
    # theme toggle, remembered
    dark = await page.js("document.documentElement.classList.contains('dark')")
    await page.js("document.getElementById('theme-toggle').click(); true")
    assert await page.js("document.documentElement.classList.contains('dark')") != dark
    assert await page.js("localStorage.getItem('bess-theme')") in ("light", "dark")
    await page.screenshot("dashboard-light")
    await page.goto(demo_url + "/")
    assert await page.js("document.documentElement.classList.contains('dark')") != dark
    # phone-sized viewport: no horizontal scrolling, the cards still show values
    await page.viewport(390, 844, mobile=True)
    await page.goto(demo_url + "/")
    await page.wait_for("document.getElementById('soc-value').dataset.value", timeout_s=20)
    overflow = await page.js("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"page is {overflow} px wider than a phone screen"
    await page.screenshot("dashboard-phone")
