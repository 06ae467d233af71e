use std::process::ExitCode;

fn main() -> ExitCode {
    appliance::cli::main()
}
