"""Drives a real headless Chromium (Debian's chromium and chromium-driver, through Selenium)
through an appliance's web console, as an operator would, for tests/tests/console.rs.

Argument: one JSON object with url, token, viewer, password, edges, pipeline, shots (a
directory for the screenshots); or, with "loads": N, only url, token, edges and shots: sign
in, then load the overview N times and report how long each took until every edge was drawn.
Prints one JSON object of what it measured; any failed expectation raises, naming the step,
and leaves a screenshot of the moment.
"""
import json
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

args = json.loads(sys.argv[1])
shots = args["shots"]

options = Options()
options.binary_location = args.get("chromium", "/usr/bin/chromium")
for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
             "--window-size=1280,800", "--no-first-run", "--disable-extensions"):
    options.add_argument(flag)
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service(args.get("chromedriver", "/usr/bin/chromedriver")),
                          options=options)
driver.set_window_size(1280, 800)
figures = {}


def shot(name):
    driver.save_screenshot(f"{shots}/{name}.png")


def wait_for(what, condition, timeout=30):
    try:
        # The pushed overview redraws the view every 2 s: an element found just before a
        # redraw is stale, and the condition is tried again.
        return WebDriverWait(driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=[StaleElementReferenceException]).until(
            lambda d: condition())
    except TimeoutException:
        shot(f"failed-{what.replace(' ', '-')}")
        raise AssertionError(f"{what}: not within {timeout} s; the page said:\n"
                             f"{driver.find_element(By.TAG_NAME, 'body').text}")


def text_of(element_id):
    for _ in range(20):
        try:
            found = driver.find_elements(By.ID, element_id)
            return found[0].text if found and found[0].is_displayed() else ""
        except StaleElementReferenceException:
            continue
    return ""


def click(what, selector):
    """Clicks the element of `selector`, found anew if a redraw replaced it."""
    def clicked():
        driver.find_element(By.CSS_SELECTOR, selector).click()
        return True
    wait_for(what, clicked)


def rows_of(table_id):
    return driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")


def sign_in_with_token(token):
    wait_for("the sign-in form", lambda: driver.find_element(By.ID, "token").is_displayed())
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "sign-in-token-button").click()


def sign_in_with_password(user, password):
    wait_for("the sign-in form", lambda: driver.find_element(By.ID, "user").is_displayed())
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "sign-in-password-button").click()


def no_horizontal_scroll():
    return driver.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth + 1")


def check_viewports(name):
    """The page stays usable on a laptop and on a phone: nothing wider than the window."""
    for label, (width, height) in (("", (1280, 800)), ("-phone", (390, 844))):
        driver.set_window_size(width, height)
        time.sleep(0.3)
        assert no_horizontal_scroll(), f"{name} is wider than a {width}x{height} window"
        shot(f"{name}{label}")
    driver.set_window_size(1280, 800)


def measure_loads(count):
    """Seconds from navigation to every edge drawn on the overview, `count` loads."""
    driver.get(args["url"])
    sign_in_with_token(args["token"])
    wait_for("every edge on the overview", lambda: len(rows_of("edges")) == len(args["edges"]),
             timeout=120)
    loads = []
    for _ in range(count):
        started = time.monotonic()
        driver.get(args["url"])
        wait_for("every edge on the overview", lambda: len(rows_of("edges")) == len(args["edges"]))
        loads.append(round(time.monotonic() - started, 3))
    shot("overview-fleet")
    return {"edges": len(args["edges"]), "loads_s": loads}


try:
    if "loads" in args:
        print(json.dumps(measure_loads(args["loads"])))
        sys.exit(0)
    # Sign in with the admin token; the overview lists the three edges with their lag.
    started = time.monotonic()
    driver.get(args["url"])
    sign_in_with_token(args["token"])
    wait_for("three edges on the overview", lambda: len(rows_of("edges")) == len(args["edges"]))
    figures["sign_in_to_overview_s"] = round(time.monotonic() - started, 3)
    overview = text_of("edges")
    for edge in args["edges"]:
        assert edge in overview, f"edge {edge} missing from the overview:\n{overview}"
    assert "connected" in overview, overview
    header = wait_for("the edges' header",
                      lambda: driver.find_element(By.CSS_SELECTOR, "#edges thead").text)
    assert "lag (records)" in header and "lag (time)" in header, header
    # The bytes/s charts are drawn (SVG) once the console has two samples of an edge.
    wait_for("an edge's throughput chart",
             lambda: driver.find_elements(By.CSS_SELECTOR, "#edges svg.spark path.spark-line"),
             timeout=30)
    check_viewports("overview")

    # Topics: a mirror's partitions and its newest records.
    driver.find_element(By.ID, "nav-topics").click()
    mirror = f"{args['edges'][0]}.sensors"
    wait_for("the topics table", lambda: mirror in text_of("topics"))
    check_viewports("topics")
    click("the mirror's link", f"a[href='#/topics/{mirror}']")
    wait_for("the newest records", lambda: len(rows_of("records")) > 0)
    assert "temp" in text_of("records"), text_of("records")
    check_viewports("topic")

    # SQL: a GROUP BY answers as a table and a bar chart.
    driver.find_element(By.ID, "nav-sql").click()
    editor = wait_for("the SQL editor", lambda: driver.find_element(By.ID, "sql"))
    editor.clear()
    editor.send_keys("SELECT _edge, count(*) AS records FROM sensors GROUP BY _edge ORDER BY _edge")
    driver.find_element(By.ID, "run").click()
    wait_for("the GROUP BY answer", lambda: len(rows_of("answer-table")) == len(args["edges"]))
    chart = driver.find_element(By.ID, "chart")
    assert chart.get_attribute("data-kind") == "bar", chart.get_attribute("outerHTML")
    bars = chart.find_elements(By.CSS_SELECTOR, "rect.bar")
    assert len(bars) == len(args["edges"]), f"{len(bars)} bars"
    assert all(float(bar.get_attribute("height")) > 0 for bar in bars)
    check_viewports("sql")

    # A followed query changes in the page while an edge produces (the test produces on one
    # edge the whole time).
    editor.clear()
    editor.send_keys("SELECT count(*) AS records FROM sensors")
    driver.find_element(By.ID, "follow").click()
    driver.find_element(By.ID, "run").click()
    wait_for("the followed answer", lambda: len(rows_of("answer-table")) == 1)
    first = wait_for("the followed answer's row", lambda: rows_of("answer-table")[0].text)
    followed = time.monotonic()
    wait_for("the followed answer to change", lambda: rows_of("answer-table")
             and rows_of("answer-table")[0].text != first)
    figures["follow_change_s"] = round(time.monotonic() - followed, 3)
    assert "live" in text_of("answer-summary"), text_of("answer-summary")
    shot("sql-follow")

    # Pipelines: pause and resume, seen in the pushed state.
    driver.find_element(By.ID, "nav-components").click()
    pipeline = args["pipeline"]
    wait_for("the pipeline, running", lambda: pipeline in text_of("pipelines")
             and "running" in text_of("pipelines"))
    click("the pause button", f"button[data-name='{pipeline}'][data-action='pause']")
    wait_for("the pipeline, paused", lambda: "paused" in text_of("pipelines"))
    check_viewports("pipelines")
    click("the resume button", f"button[data-name='{pipeline}'][data-action='resume']")
    wait_for("the pipeline, running again", lambda: "running" in text_of("pipelines")
             and "paused" not in text_of("pipelines"))

    # A user without the ACL: the pause is refused and the page says why.
    driver.find_element(By.ID, "sign-out").click()
    sign_in_with_password(args["viewer"], args["password"])
    wait_for("the viewer's overview", lambda: driver.find_element(By.ID, "nav").is_displayed())
    driver.find_element(By.ID, "nav-components").click()
    wait_for("the pipeline, for the viewer", lambda: pipeline in text_of("pipelines"))
    click("the pause button", f"button[data-name='{pipeline}'][data-action='pause']")
    wait_for("the refusal shown", lambda: "refused" in text_of("notice"))
    refusal = text_of("notice")
    assert args["viewer"] in refusal and "acl add" in refusal, refusal
    figures["refusal"] = refusal
    shot("refused")

    # The strict Content-Security-Policy held: the page needed nothing it forbids.
    violations = [entry["message"] for entry in driver.get_log("browser")
                  if "Content Security Policy" in entry["message"]]
    assert not violations, violations
    print(json.dumps(figures))
finally:
    driver.quit()
