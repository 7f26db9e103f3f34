//! The live map page and share links in headless Chromium, one browser for
//! the whole suite (a browser start costs more than most cases). Each state
//! is saved as a screenshot under `target/tmp/browser/` (paths printed).
//!
//! Every request the browser makes off the server goes to a recording
//! proxy: with no tile URL it must stay empty; with one, tiles are the only
//! thing it sees.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::{Value, json};

use mapcast_bench::TargetArgs;
use mapcast_bench::page::PageArgs;
use mapcast_bench::wire::Version;

use crate::helpers::{
    Browser, OffServer, PASSWORD, TestApp, browser_available, expect_json, fast_map, location,
    location_at, mark_browser_ran, spawn_app_in, spawn_app_with,
};

const LOAD: Duration = Duration::from_secs(10);
/// The bound: a publish shows on the map within 2 s.
const MOVE: Duration = Duration::from_secs(2);

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn status_is(state: &str) -> String {
    format!("return document.getElementById('status').dataset.state === '{state}'")
}

fn marker_d(key: &str) -> String {
    format!(
        "return document.querySelector(\"path.device-marker[data-device='{key}']\")?.getAttribute('d') ?? null"
    )
}

async fn features(app: &TestApp, token: &str) -> Vec<Value> {
    let map = expect_json(app.api().get("/api/v1/map", Some(token)).await, StatusCode::OK).await;
    map["features"].as_array().unwrap().clone()
}

async fn publish(app: &TestApp, id: &str, secret: &str, payload: String) {
    let mut mqtt = app.v5(&format!("pub-{}", now_ms())).credentials(id, secret).connect().await;
    mqtt.publish_qos1(&format!("devices/{id}/location"), false, payload).await;
}

fn assert_no_console_errors(errors: Vec<String>, when: &str) {
    assert!(errors.is_empty(), "console errors {when}: {errors:#?}");
}

#[tokio::test]
async fn the_map_page_and_share_links_in_chromium() {
    if !browser_available() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let app = spawn_app_in(data.path(), fast_map).await;
    let api = app.api();
    let ann = api.sign_up("ann").await;
    let golf = api.create_device(&ann, "Golf", "car").await;
    let pixel = api.create_device(&ann, "Pixel", "phone").await;
    let bob = api.sign_up("bob").await;
    let polo = api.create_device(&bob, "Polo", "car").await;
    // Golf has a history: three fixes a minute ago, driving east.
    for (i, lon) in [13.40, 13.41, 13.42].into_iter().enumerate() {
        publish(&app, &golf.id, &golf.secret, location_at(lon, 52.5, now_ms() - 60_000 + i as i64))
            .await;
    }
    publish(&app, &pixel.id, &pixel.secret, location(2.35, 48.85)).await;
    publish(&app, &polo.id, &polo.secret, location(-0.12, 51.5)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while features(&app, &ann).await.len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the map never held 3 devices");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let proxy = OffServer::start().await;
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    eprintln!("screenshots go to {}", artifacts.display());
    let b = Browser::start(&proxy, artifacts).await;
    let base = format!("http://{}", app.http_addr);

    // Signed out, on a server that lets anyone read the map (loopback's
    // default): the shared map, live, next to the sign-in form.
    let public = expect_json(app.api().get("/api/v1/map", None).await, StatusCode::OK).await;
    let public = public["features"].as_array().unwrap().len();
    assert_eq!(public, 3);
    b.goto(&format!("{base}/")).await;
    b.wait_for(
        "the public map next to the sign-in form",
        LOAD,
        &format!(
            "return !document.getElementById('signin').hidden \
             && document.getElementById('account').hidden \
             && document.getElementById('status').dataset.state === 'live' \
             && document.querySelectorAll('path.device-marker').length === {public}"
        ),
    )
    .await;
    b.screenshot("01-signed-out").await;
    assert_no_console_errors(b.console_errors().await, "signed out");

    // Sign in through the form.
    b.type_into("#username", "ann").await;
    b.type_into("#password", PASSWORD).await;
    b.click("#signin button[type=submit]").await;
    b.wait_for(
        "a live stream, signed in",
        LOAD,
        &format!(
            "return !document.getElementById('account').hidden && ({})",
            status_is("live").trim_start_matches("return ")
        ),
    )
    .await;
    let token = b.eval("return sessionStorage.getItem('mapcast.token')", json!([])).await;
    let token = token.as_str().expect("the token is kept in sessionStorage").to_owned();

    // One marker per device in the snapshot, and one list entry each.
    let n = features(&app, &ann).await.len();
    b.wait_for(
        "a marker per device",
        LOAD,
        &format!(
            "return document.querySelectorAll('path.device-marker').length === {n} \
             && document.querySelectorAll('#devices button').length === {n}"
        ),
    )
    .await;
    b.screenshot("02-signed-in").await;

    // Nothing was requested off the server.
    let foreign = b
        .eval(
            "return performance.getEntriesByType('resource').map(e => e.name) \
             .filter(u => !u.startsWith(location.origin))",
            json!([]),
        )
        .await;
    assert_eq!(foreign, json!([]), "resources from elsewhere");
    assert!(proxy.requests().is_empty(), "requests off the server: {:?}", proxy.requests());

    // Keyboard: the device list is made of buttons; Enter opens the details
    // and the trail of the chosen period.
    b.type_into(&format!("#devices button[data-device='{}']", golf.id), "\u{E007}").await;
    b.wait_for(
        "the trail",
        LOAD,
        "return document.querySelector('path.trail') !== null \
         && document.getElementById('trail-info').textContent === '3 positions'",
    )
    .await;
    let details = b
        .eval(
            "return Object.fromEntries([...document.querySelectorAll('#details-list dd')] \
             .map(dd => [dd.dataset.field, dd.textContent]))",
            json!([]),
        )
        .await;
    assert_eq!(
        b.eval("return document.getElementById('details-title').textContent", json!([])).await,
        "Golf"
    );
    assert_eq!(details["kind"], "car", "{details}");
    assert_eq!(details["speed"], "45.0 km/h", "{details}");
    assert_eq!(details["battery"], "80 %", "{details}");
    assert!(details["last-seen"].as_str().unwrap().contains("ago"), "{details}");
    b.screenshot("03-details-and-trail").await;

    // Another user's public device: its name, from the position API, which
    // answers for it because the viewer may read the map.
    b.click(&format!("#devices button[data-device='{}']", polo.id)).await;
    b.wait_for(
        "the other user's device by name",
        LOAD,
        &format!(
            "return document.getElementById('details-title').textContent === 'Polo' \
             && document.querySelector(\"#devices button[data-device='{}'] .name\").textContent === 'Polo' \
             && document.querySelector(\"#details-list dd[data-field='last-seen']\").textContent.includes('ago')",
            polo.id
        ),
    )
    .await;
    b.screenshot("03b-other-users-device").await;
    b.type_into(&format!("#devices button[data-device='{}']", golf.id), "\u{E007}").await;
    b.wait_for(
        "Golf again",
        LOAD,
        "return document.getElementById('details-title').textContent === 'Golf' \
         && document.getElementById('trail-info').textContent === '3 positions'",
    )
    .await;

    // An MQTT publish moves the marker within 2 s.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = b.eval(&marker_d(&golf.id), json!([])).await;
    publish(&app, &golf.id, &golf.secret, location(13.45, 52.52)).await;
    let took = b
        .wait_for(
            "the marker to move",
            MOVE,
            "return document.querySelector(\"#details-list dd[data-field='position']\").textContent \
             === '52.52000, 13.45000'",
        )
        .await;
    eprintln!("a publish moved the marker after {took:?}");
    assert_ne!(b.eval(&marker_d(&golf.id), json!([])).await, before, "the marker was not redrawn");
    b.wait_for(
        "the trail to grow",
        MOVE,
        "return document.getElementById('trail-info').textContent === '4 positions'",
    )
    .await;
    b.screenshot("04-moved").await;
    assert_no_console_errors(b.console_errors().await, "while signed in");

    // Another user's device moves: the page applies the map's `?since=`
    // diff and does not download the whole map again.
    let full_maps = "return performance.getEntriesByType('resource') \
        .filter(e => /\\/api\\/v1\\/map(\\?zoom=\\d+)?$/.test(new URL(e.name).pathname + new URL(e.name).search)).length";
    let diffs = "return performance.getEntriesByType('resource') \
        .filter(e => new URL(e.name).search.startsWith('?since=')).length";
    b.click(&format!("#devices button[data-device='{}']", polo.id)).await;
    b.wait_for(
        "Polo's details",
        LOAD,
        "return document.getElementById('details-title').textContent === 'Polo'",
    )
    .await;
    let (full_before, diffs_before) =
        (b.eval(full_maps, json!([])).await, b.eval(diffs, json!([])).await);
    publish(&app, &polo.id, &polo.secret, location(-0.2, 51.6)).await;
    b.wait_for(
        "the other user's device to move",
        Duration::from_secs(5),
        "return document.querySelector(\"#details-list dd[data-field='position']\").textContent \
         === '51.60000, -0.20000'",
    )
    .await;
    let diffs_after = b.eval(diffs, json!([])).await.as_u64().unwrap();
    assert!(diffs_after > diffs_before.as_u64().unwrap(), "no ?since= diff was fetched");
    assert_eq!(b.eval(full_maps, json!([])).await, full_before, "the whole map was fetched again");
    b.click(&format!("#devices button[data-device='{}']", golf.id)).await;
    b.wait_for(
        "Golf's details",
        LOAD,
        "return document.getElementById('details-title').textContent === 'Golf'",
    )
    .await;

    // A phone-sized screen: no sideways scrolling, the panel under the map.
    b.set_window(390, 844).await;
    b.wait_for("the phone layout", LOAD, "return window.innerWidth <= 400").await;
    let layout = b
        .eval(
            "const m = document.getElementById('map').getBoundingClientRect(); \
             const p = document.getElementById('panel').getBoundingClientRect(); \
             return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth, \
                     mapW: m.width, mapH: m.height, mapBottom: m.bottom, panelTop: p.top, \
                     markers: document.querySelectorAll('path.device-marker').length}",
            json!([]),
        )
        .await;
    let f = |k: &str| layout[k].as_f64().unwrap();
    assert!(f("scroll") <= f("inner"), "scrolls sideways: {layout}");
    assert!(f("mapW") <= f("inner") && f("mapH") >= 200.0, "{layout}");
    assert!(f("panelTop") >= f("mapBottom") - 1.0, "the panel is not under the map: {layout}");
    assert_eq!(f("markers") as usize, n, "{layout}");
    b.screenshot("05-phone").await;
    b.set_window(1280, 800).await;

    // The stream drops: the page says so, and comes back by itself.
    let http = app.http_addr;
    app.stop().await;
    b.wait_for("the stale state", LOAD, &status_is("stale")).await;
    b.screenshot("06-stale").await;
    let app = spawn_app_in(data.path(), |s| {
        fast_map(s);
        s.http.listen = http;
    })
    .await;
    b.wait_for("live again", Duration::from_secs(20), &status_is("live")).await;
    publish(&app, &golf.id, &golf.secret, location(13.46, 52.53)).await;
    b.wait_for(
        "a move after reconnecting",
        MOVE,
        "return document.querySelector(\"#details-list dd[data-field='position']\").textContent \
         === '52.53000, 13.46000'",
    )
    .await;
    b.screenshot("07-reconnected").await;
    // The refused connections while the server was down are expected.
    let _ = b.console().await;

    // Sign out: the form again, only the public map, the token revoked.
    b.click("#signout").await;
    b.wait_for(
        "signed out",
        LOAD,
        &format!(
            "return !document.getElementById('signin').hidden \
             && document.getElementById('account').hidden \
             && document.querySelectorAll('path.device-marker').length === {public} \
             && sessionStorage.getItem('mapcast.token') === null"
        ),
    )
    .await;
    let me = app.api().get("/api/v1/sessions/current", Some(&token)).await;
    assert_eq!(me.status(), 401, "the page's token still works after signing out");
    b.screenshot("08-signed-out-again").await;
    assert_no_console_errors(b.console_errors().await, "signing out");

    // A share link: that device only, live, no sign-in; then it expires.
    let share = |secs: u64| {
        let api = app.api();
        let (ann, id) = (ann.clone(), golf.id.clone());
        async move {
            let resp = api
                .post_json(
                    &format!("/api/v1/devices/{id}/shares"),
                    Some(&ann),
                    &json!({"expires_in_secs": secs}),
                )
                .await;
            expect_json(resp, StatusCode::CREATED).await
        }
    };
    let short = share(5).await;
    b.goto(&format!("{base}{}", short["url"].as_str().unwrap())).await;
    b.wait_for(
        "the shared device",
        LOAD,
        "return document.getElementById('status').dataset.state === 'live' \
         && document.querySelectorAll('path.device-marker').length === 1 \
         && document.querySelectorAll('#devices button').length === 1 \
         && document.querySelector('#devices .name').textContent === 'Golf'",
    )
    .await;
    assert_eq!(
        b.eval("return document.getElementById('signin').hidden && document.getElementById('account').hidden", json!([])).await,
        true
    );
    let before = b.eval(&marker_d("shared"), json!([])).await;
    publish(&app, &golf.id, &golf.secret, location(13.47, 52.54)).await;
    b.wait_for(
        "the shared marker to move",
        Duration::from_secs(3),
        &format!("return ({}) !== {}", marker_d("shared").trim_start_matches("return "), before),
    )
    .await;
    b.screenshot("09-share-live").await;
    assert_no_console_errors(b.console_errors().await, "on a live share link");
    b.wait_for(
        "the expired page",
        LOAD,
        "return document.querySelector('#expired h1')?.textContent === 'This link has expired'",
    )
    .await;
    b.screenshot("10-share-expired").await;

    // Revoked: the open page turns into the expired page.
    let long = share(3600).await;
    b.goto(&format!("{base}{}", long["url"].as_str().unwrap())).await;
    b.wait_for("the shared device", LOAD, &status_is("live")).await;
    let revoke = format!("/api/v1/devices/{}/shares/{}", golf.id, long["id"].as_str().unwrap());
    assert_eq!(app.api().delete(&revoke, Some(&ann)).await.status(), 204);
    b.wait_for(
        "the page of a revoked link",
        Duration::from_secs(3),
        "return document.querySelector('#expired h1')?.textContent === 'This link has expired'",
    )
    .await;
    b.screenshot("11-share-revoked").await;
    assert!(proxy.requests().is_empty(), "requests off the server: {:?}", proxy.requests());

    // With a tile URL, tiles are fetched from there, and only from there.
    let tiled = spawn_app_with(|s| {
        fast_map(s);
        s.map.tile_url = Some("http://tiles.mapcast.test/{z}/{x}/{y}.png".into());
        s.map.tile_attribution = Some("Tiles by Example".into());
    })
    .await;
    let page = tiled.api().get("/", None).await;
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("img-src 'self' data: http://tiles.mapcast.test;"), "{csp}");
    b.goto(&format!("http://{}/", tiled.http_addr)).await;
    b.wait_for(
        "the attribution",
        LOAD,
        "return document.querySelector('.leaflet-control-attribution')?.textContent.includes('Tiles by Example') === true",
    )
    .await;
    let deadline = tokio::time::Instant::now() + LOAD;
    while proxy.requests().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no tile was requested");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let requests = proxy.requests();
    assert!(
        requests.iter().all(|r| r.contains("tiles.mapcast.test")),
        "requests other than tiles: {requests:?}"
    );
    b.screenshot("12-tiles-requested").await;

    // A server that does not let anonymous viewers read the map: signed out,
    // the form and no map, and the page asks for nothing it would refuse.
    let private = spawn_app_with(|s| {
        fast_map(s);
        s.auth.allow_anonymous = Some(false);
    })
    .await;
    let other = private.api().sign_up("olaf").await;
    let van = private.api().create_device(&other, "Van", "car").await;
    publish(&private, &van.id, &van.secret, location(4.9, 52.37)).await;
    while features(&private, &other).await.is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Expected before: the expired links' 410s, the unreachable tiles.
    let _ = b.console().await;
    b.goto(&format!("http://{}/", private.http_addr)).await;
    b.wait_for("the sign-in form", LOAD, "return !document.getElementById('signin').hidden").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        b.eval("return document.querySelectorAll('path.device-marker').length", json!([])).await,
        0
    );
    b.screenshot("13-private-signed-out").await;
    assert_no_console_errors(b.console_errors().await, "signed out of a private server");

    b.quit().await;
    mark_browser_ran().await;
}

/// `mapcast bench page` measures what it says: it fills the map, signs in,
/// and times the page until it holds a marker per device; the page weight
/// is what the browser fetched.
#[tokio::test]
async fn the_page_benchmark_reports_weight_and_first_render() {
    if !browser_available() {
        return;
    }
    let app = spawn_app_with(fast_map).await;
    app.api().sign_up("viewer").await;
    let args = PageArgs {
        target: TargetArgs {
            host: app.mqtt_addr.ip().to_string(),
            port: app.mqtt_addr.port(),
            mqtt_version: Version::V5,
            username: None,
            password: None,
            keep_alive: 60,
            broker_pid: None,
            json: false,
            source_addresses: 1,
        },
        http_url: format!("http://{}", app.http_addr),
        viewer: "viewer".into(),
        viewer_password: PASSWORD.into(),
        devices: 50,
        topic: "devices/bench-{i}/location".into(),
        runs: 3,
        timeout: 30.0,
        chromium: "/usr/bin/chromium".into(),
        chromedriver: "/usr/bin/chromedriver".into(),
    };
    let report = mapcast_bench::page::measure(args).await.unwrap();

    assert_eq!(report.markers, 50);
    assert_eq!(report.first_render_ms.len(), 3);
    assert!(report.first_render_ms.iter().all(|ms| *ms > 0.0), "{report:?}");
    let paths: Vec<&str> = report.assets.iter().map(|a| a.path.as_str()).collect();
    for file in ["/ui/app.js", "/ui/app.css", "/ui/vendor/leaflet/leaflet.js"] {
        assert!(paths.contains(&file), "{file} missing from {paths:?}");
    }
    assert!(report.js_css_decoded_bytes > 150_000, "{report:?}");
}
