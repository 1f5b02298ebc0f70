//! Durations in the right bucket: a 100 ms handler, millisecond buckets, and large bodies
//! to slow readers, written by the server or sent with sendfile.

use std::{io::Read as _, thread, time::Duration};

use monitor_tests::{
    MonitorAgent,
    http::{SERVER_DURATION, client, connect, get, send},
    servers::Server,
};

use super::wait_for_count;

#[test]
fn a_100ms_handler_lands_in_the_100_to_250ms_bucket() {
    let agent = MonitorAgent::start(&[]);
    let server = Server::python();
    let client = client();
    for _ in 0..5 {
        assert_eq!(get(&client, &server.url("/sleep/100")), 200);
    }
    let scrape = wait_for_count(&agent, &server.service, 200, "/sleep/{id}", 5);
    let status = "200";
    let labels = [
        ("service_name", server.service.as_str()),
        ("http_response_status_code", status),
    ];
    let buckets = scrape.histogram(SERVER_DURATION, &labels).unwrap();
    let at = |bound: f64| buckets.iter().find(|(le, _)| *le == bound).unwrap().1;
    assert_eq!((at(0.1), at(0.25)), (0, 5), "buckets: {buckets:?}");
}

#[test]
fn millisecond_buckets_place_a_2ms_handler_median_between_2_and_4ms() {
    let bounds: Vec<String> = (1..=32)
        .map(|ms| format!("{}", ms as f64 / 1000.0))
        .collect();
    let agent = MonitorAgent::start(&["--duration-buckets", &bounds.join(",")]);
    let server = Server::node();
    let client = client();
    for _ in 0..50 {
        assert_eq!(get(&client, &server.url("/sleep/2")), 200);
    }
    let scrape = wait_for_count(&agent, &server.service, 200, "/sleep/{id}", 50);
    let labels = [("service_name", server.service.as_str())];
    let buckets = scrape.histogram(SERVER_DURATION, &labels).unwrap();
    // The bucket that holds the median, as histogram_quantile would find it.
    let (index, _) = buckets
        .iter()
        .enumerate()
        .find(|(_, (_, c))| *c >= 25)
        .unwrap();
    let upper = buckets[index].0;
    let lower = if index == 0 {
        0.0
    } else {
        buckets[index - 1].0
    };
    assert!(
        lower >= 0.002 && upper <= 0.004,
        "median in ({lower}, {upper}]: {buckets:?}"
    );
}

#[test]
fn a_large_body_to_a_slow_reader_counts_the_transfer() {
    let agent = MonitorAgent::start(&[]);
    let server = Server::python();
    let mut stream = connect(server.port);
    send(
        &mut stream,
        b"GET /bytes/20000000 HTTP/1.1\r\nHost: test\r\n\r\n",
    );
    // The reader takes 20 MB at about 8 MB/s (the pauses are the slow reader, not waiting
    // for anything): the server's last write returns only when most of it is read.
    let mut received = 0usize;
    let mut chunk = vec![0u8; 256 * 1024];
    while received < 20_000_000 {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed early");
        received += n;
        thread::sleep(Duration::from_millis(n as u64 * 1000 / 8_000_000));
    }
    drop(stream);
    let scrape = wait_for_count(&agent, &server.service, 200, "/bytes/{id}", 1);
    let labels = [("service_name", server.service.as_str())];
    let buckets = scrape.histogram(SERVER_DURATION, &labels).unwrap();
    let at = |bound: f64| buckets.iter().find(|(le, _)| *le == bound).unwrap().1;
    assert_eq!(
        at(1.0),
        0,
        "the transfer takes more than a second: {buckets:?}"
    );
    assert_eq!(at(5.0), 1, "and less than five: {buckets:?}");
}

#[test]
fn a_large_file_sent_with_sendfile_counts_the_transfer() {
    let agent = MonitorAgent::start(&[]);
    let nginx = Server::nginx("    sendfile on;\n    location /files/ { }");
    std::fs::create_dir(nginx.dir().join("files")).unwrap();
    std::fs::write(nginx.dir().join("files/big.bin"), vec![b'x'; 20_000_000]).unwrap();
    let mut stream = connect(nginx.port);
    send(
        &mut stream,
        b"GET /files/big.bin HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    // A slow reader again (about 8 MB/s), now against nginx's sendfile.
    let mut received = 0usize;
    let mut chunk = vec![0u8; 256 * 1024];
    while received < 20_000_000 {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed early");
        received += n;
        thread::sleep(Duration::from_millis(n as u64 * 1000 / 8_000_000));
    }
    drop(stream);
    let scrape = wait_for_count(&agent, "nginx", 200, "/files/big.bin", 1);
    let buckets = scrape
        .histogram(SERVER_DURATION, &[("service_name", "nginx")])
        .unwrap();
    let at = |bound: f64| buckets.iter().find(|(le, _)| *le == bound).unwrap().1;
    assert_eq!(
        (at(1.0), at(5.0)),
        (0, 1),
        "the transfer took 1 to 5 s: {buckets:?}"
    );
}
