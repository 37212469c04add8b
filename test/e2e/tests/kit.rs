//! The harness starts, resets and stops the local cloud endpoints by PID.

use capwin_e2e::{CloudKit, Env};

async fn http_get(url: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_starts_for_a_scenario_and_stops_with_it() {
    let mut env = Env::start("kit", &[]).await.unwrap();
    let url = env.start_cloud(CloudKit::Aws).unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert_eq!(http_get(&url, "/moto-api/").await, Some(200));
    drop(env);
    assert_eq!(http_get(&url, "/moto-api/").await, None, "stopped with the scenario");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_arm_stand_in_starts_over_https_and_stops_with_the_scenario() {
    let mut env = Env::start("kitarm", &[]).await.unwrap();
    let url = env.start_cloud(CloudKit::Azure).unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let host = url.trim_start_matches("https://").trim_end_matches('/').to_string();
    assert!(tokio::net::TcpStream::connect(&host).await.is_ok());
    drop(env);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(tokio::net::TcpStream::connect(&host).await.is_err(), "stopped with the scenario");
}
