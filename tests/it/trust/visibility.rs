//! Who sees a device on the shared map: public devices only; a private one
//! is seen by its owner (`GET /api/v1/map/mine`) and nobody else. Off
//! loopback, devices are private unless their owner says otherwise.

use std::net::SocketAddr;

use reqwest::Method;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::json;

use crate::helpers::{
    Api, DeviceCreds, TestApp, expect_json, expect_problem, fast_map, feature_ids, location,
    spawn_app_with,
};

async fn device(api: &Api, token: &str, name: &str, visibility: Option<&str>) -> DeviceCreds {
    let mut body = json!({"name": name, "kind": "car"});
    if let Some(v) = visibility {
        body["visibility"] = v.into();
    }
    let resp = api.post_json("/api/v1/devices", Some(token), &body).await;
    let body = expect_json(resp, reqwest::StatusCode::CREATED).await;
    assert_eq!(body["visibility"], visibility.unwrap_or("public"), "{body}");
    DeviceCreds {
        id: body["id"].as_str().unwrap().to_owned(),
        secret: body["secret"].as_str().unwrap().to_owned(),
    }
}

async fn report_position(app: &TestApp, car: &DeviceCreds, lon: f64) {
    let mut c = app.v5(&format!("{}-c", car.id)).credentials(&car.id, &car.secret).connect().await;
    c.publish_qos1(&format!("devices/{}/location", car.id), false, location(lon, 1.0)).await;
    c.disconnect().await;
}

async fn my_map(api: &Api, token: &str) -> serde_json::Value {
    let resp = api.get("/api/v1/map/mine", Some(token)).await;
    expect_json(resp, reqwest::StatusCode::OK).await
}

#[tokio::test]
async fn a_private_device_is_on_its_owners_map_only_until_made_public() {
    let app = spawn_app_with(fast_map).await;
    let api = app.api();
    let ann = api.sign_up("ann").await;
    let bob = api.sign_up("bob").await;
    let hidden = device(&api, &ann, "Golf", Some("private")).await;
    let shown = device(&api, &bob, "Polo", None).await;
    report_position(&app, &hidden, 1.0).await;
    report_position(&app, &shown, 2.0).await;

    // Once the public one is on the map, the private one (older) would be too.
    let map = app.wait_for_map(|m| feature_ids(m).contains(&shown.id)).await;
    assert!(!feature_ids(&map).contains(&hidden.id), "a private device is on the map: {map}");
    let mut phone =
        app.v5("bob-phone").credentials("bob", crate::helpers::PASSWORD).connect().await;
    phone.subscribe("map/snapshot", QoS::AtMostOnce).await;
    let retained: serde_json::Value =
        serde_json::from_slice(&phone.recv_publish().await.payload).unwrap();
    assert!(!feature_ids(&retained).contains(&hidden.id), "{retained}");

    assert_eq!(feature_ids(&my_map(&api, &ann).await), vec![hidden.id.clone()]);
    assert_eq!(feature_ids(&my_map(&api, &bob).await), vec![shown.id.clone()]);
    expect_problem(api.get("/api/v1/map/mine", None).await, 401, "unauthorized").await;

    // Bob may not change Ann's device; Ann may.
    let path = format!("/api/v1/devices/{}", hidden.id);
    let public = Some(("application/json", json!({"visibility": "public"}).to_string()));
    let by_bob = api.send(Method::PATCH, &path, Some(&bob), public.clone()).await;
    expect_problem(by_bob, 403, "forbidden").await;
    let odd = Some(("application/json", json!({"visibility": "friends"}).to_string()));
    let unknown_value = api.send(Method::PATCH, &path, Some(&ann), odd).await;
    expect_problem(unknown_value, 422, "unprocessable").await;
    let no_device = api.send(Method::PATCH, "/api/v1/devices/nope", Some(&ann), public.clone());
    expect_problem(no_device.await, 404, "not-found").await;
    let by_ann = api.send(Method::PATCH, &path, Some(&ann), public).await;
    assert_eq!(expect_json(by_ann, reqwest::StatusCode::OK).await["visibility"], "public");
    app.wait_for_map(|m| feature_ids(m).contains(&hidden.id)).await;
}

#[tokio::test]
async fn off_loopback_devices_are_private_unless_their_owner_says_otherwise() {
    let app = spawn_app_with(|s| {
        fast_map(s);
        s.http.listen = "0.0.0.0:0".parse().unwrap();
        s.auth.self_registration = Some(true);
    })
    .await;
    let api = Api::new(SocketAddr::from(([127, 0, 0, 1], app.http_addr.port())));
    let ann = api.sign_up("ann").await;
    let resp =
        api.post_json("/api/v1/devices", Some(&ann), &json!({"name": "Golf", "kind": "car"})).await;
    assert_eq!(expect_json(resp, reqwest::StatusCode::CREATED).await["visibility"], "private");
    let public = device(&api, &ann, "Polo", Some("public")).await;
    let bad = api
        .post_json(
            "/api/v1/devices",
            Some(&ann),
            &json!({"name": "X", "kind": "car", "visibility": "friends"}),
        )
        .await;
    expect_problem(bad, 422, "unprocessable").await;
    report_position(&app, &public, 3.0).await;
}

/// The map as `token` reads it, once `ready` holds.
async fn wait_for_map_as(
    api: &Api,
    token: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + crate::helpers::MAP_WAIT;
    loop {
        let resp = api.get("/api/v1/map", Some(token)).await;
        if resp.status() == 200 {
            let map: serde_json::Value = resp.json().await.unwrap();
            if ready(&map) {
                return map;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the map never got there");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn off_loopback_the_map_names_devices_by_a_public_map_id_that_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let public = |s: &mut mapcast::config::Settings| {
        fast_map(s);
        s.http.listen = "0.0.0.0:0".parse().unwrap();
        s.auth.self_registration = Some(true);
    };
    let (car, map_id) = {
        let app = crate::helpers::spawn_app_in(dir.path(), public).await;
        let api = Api::new(SocketAddr::from(([127, 0, 0, 1], app.http_addr.port())));
        let ann = api.sign_up("ann").await;
        let car = device(&api, &ann, "Polo", Some("public")).await;
        let shown = expect_json(
            api.get(&format!("/api/v1/devices/{}", car.id), Some(&ann)).await,
            reqwest::StatusCode::OK,
        )
        .await;
        let map_id = shown["map_id"].as_str().expect("a map id off loopback").to_owned();
        assert_ne!(map_id, car.id);
        report_position(&app, &car, 3.0).await;

        let map = wait_for_map_as(&api, &ann, |m| feature_ids(m).contains(&map_id)).await;
        assert!(!map.to_string().contains(&car.id), "the device id is on the map: {map}");
        app.stop().await;
        (car, map_id)
    };
    let app = crate::helpers::spawn_app_in(dir.path(), public).await;
    let api = Api::new(SocketAddr::from(([127, 0, 0, 1], app.http_addr.port())));
    let ann = api.login("ann", crate::helpers::PASSWORD).await;
    report_position(&app, &car, 4.0).await;
    wait_for_map_as(&api, &ann, |m| feature_ids(m).contains(&map_id)).await;
}
