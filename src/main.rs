fn main() {
    std::process::exit(tinyscale::cli::main());
}
