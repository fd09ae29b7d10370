//! `kadyn-gen`: see the library crate for what it writes. Ctrl-C just ends the process: every
//! file is written under a temporary name and renamed when complete, so rerunning resumes.

fn main() {
    std::process::exit(kadyn_gen::main_with(std::env::args_os(), &|| false));
}
