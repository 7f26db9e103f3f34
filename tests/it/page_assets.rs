//! The page's files are sent gzip-compressed to clients that accept it,
//! as their own representation (ETag, Vary), and as they are to others.

use std::io::Read;

use reqwest::header::{ACCEPT_ENCODING, CONTENT_ENCODING, ETAG, IF_NONE_MATCH, VARY};

use crate::helpers::spawn_app;

const FILES: &[&str] =
    &["app.js", "app.css", "vendor/leaflet/leaflet.js", "vendor/leaflet/leaflet.css"];

#[tokio::test]
async fn page_files_are_gzipped_for_clients_that_accept_it_and_plain_for_others() {
    let app = spawn_app().await;
    // reqwest may be built with gzip support elsewhere in the tree: keep
    // the bytes as sent.
    let http = reqwest::Client::builder().no_gzip().build().unwrap();
    for file in FILES {
        let url = format!("http://{}/ui/{file}", app.http_addr);
        let plain = http.get(&url).send().await.unwrap();
        assert_eq!(plain.status(), 200, "{file}");
        assert!(plain.headers().get(CONTENT_ENCODING).is_none(), "{file}");
        assert_eq!(plain.headers()[VARY], "Accept-Encoding", "{file}");
        let plain_etag = plain.headers()[ETAG].clone();
        let plain = plain.bytes().await.unwrap();

        let gz = http.get(&url).header(ACCEPT_ENCODING, "gzip, deflate, br").send().await.unwrap();
        assert_eq!(gz.status(), 200, "{file}");
        assert_eq!(gz.headers()[CONTENT_ENCODING], "gzip", "{file}");
        assert_eq!(gz.headers()[VARY], "Accept-Encoding", "{file}");
        let gz_etag = gz.headers()[ETAG].clone();
        assert_ne!(gz_etag, plain_etag, "{file}: two encodings share a validator");
        let sent = gz.bytes().await.unwrap();
        assert!(sent.len() * 2 < plain.len(), "{file}: {} of {} bytes", sent.len(), plain.len());
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&sent[..]).read_to_end(&mut decoded).unwrap();
        assert_eq!(decoded, plain, "{file}: the gzip body is not the file");

        // Revalidation answers per representation.
        let same = http
            .get(&url)
            .header(ACCEPT_ENCODING, "gzip")
            .header(IF_NONE_MATCH, gz_etag.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(same.status(), 304, "{file}");
        assert_eq!(same.headers()[ETAG], gz_etag, "{file}");
        let refused = http
            .get(&url)
            .header(ACCEPT_ENCODING, "gzip;q=0")
            .header(IF_NONE_MATCH, gz_etag)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 200, "{file}: a plain client got the gzip validator's 304");
        assert!(refused.headers().get(CONTENT_ENCODING).is_none(), "{file}");
    }
}
