//! `burst CONNECTIONS`: one process that is both a thread-per-connection HTTP server on an
//! ephemeral port of 127.0.0.1 and a client with CONNECTIONS connections to it, one thread
//! each. The client threads send their first request at the same instant (a barrier), so
//! several CPUs see the process's first request to a route, and its first to a server address,
//! at once: the kernel's first-come admission of a route or address must not put the losers
//! of that race under `__overflow__`. Requests go to `/burst/items` with `Host: burst.test`.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::ExitCode,
    sync::{Arc, Barrier},
    thread,
};

const REQUEST: &[u8] = b"GET /burst/items HTTP/1.1\r\nHost: burst.test\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";

/// Reads until `stream` has delivered a head and `body` more bytes.
fn read_message(stream: &mut TcpStream, body: usize) -> std::io::Result<()> {
    let mut message = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        if let Some(end) = message.windows(4).position(|w| w == b"\r\n\r\n")
            && message.len() >= end + 4 + body
        {
            return Ok(());
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        message.extend_from_slice(&chunk[..n]);
    }
}

fn serve(listener: TcpListener, connections: usize) {
    for stream in listener.incoming().take(connections) {
        let Ok(mut stream) = stream else { return };
        thread::spawn(move || {
            if read_message(&mut stream, 0).is_ok() {
                let _ = stream.write_all(RESPONSE);
            }
        });
    }
}

fn burst(connections: usize) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    thread::spawn(move || serve(listener, connections));
    let start = Arc::new(Barrier::new(connections));
    let clients: Vec<_> = (0..connections)
        .map(|_| {
            let mut stream = TcpStream::connect(address)?;
            let start = Arc::clone(&start);
            Ok(thread::spawn(move || -> std::io::Result<()> {
                start.wait();
                stream.write_all(REQUEST)?;
                read_message(&mut stream, 3)
            }))
        })
        .collect::<std::io::Result<_>>()?;
    for client in clients {
        client
            .join()
            .map_err(|_| std::io::Error::other("client thread panicked"))??;
    }
    Ok(())
}

fn main() -> ExitCode {
    let connections = std::env::args().nth(1).and_then(|n| n.parse().ok());
    let Some(connections) = connections.filter(|&n: &usize| n > 0) else {
        eprintln!("usage: burst CONNECTIONS");
        return ExitCode::FAILURE;
    };
    match burst(connections) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("burst: {error}");
            ExitCode::FAILURE
        }
    }
}
