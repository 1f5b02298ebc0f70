use which::which;

/// The BPF crate links with `bpf-linker`, a dependency cargo cannot see: rebuild when it changes.
/// (`cargo xtask setup` installs it; see aya-template for the same trick.)
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found in PATH: run `cargo xtask setup`"),
    }
}
