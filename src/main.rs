fn main() -> std::process::ExitCode {
    scaledown::cli::main()
}
