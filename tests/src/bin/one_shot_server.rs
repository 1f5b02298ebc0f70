//! `one-shot-server`: listens on an ephemeral port of 127.0.0.1, prints the port, answers one
//! HTTP/1.1 request (any path) with `200 OK` and `Connection: close`, and exits. The churn test
//! and `cargo xtask churn`/`soak` run thousands of them: processes that live for one request.
use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    process::ExitCode,
};

fn serve_once() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", listener.local_addr()?.port())?;
    stdout.flush()?;
    let (mut stream, _) = listener.accept()?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
}

fn main() -> ExitCode {
    match serve_once() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("one-shot-server: {error}");
            ExitCode::FAILURE
        }
    }
}
