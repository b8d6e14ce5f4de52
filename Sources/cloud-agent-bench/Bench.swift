import ArgumentParser
import Foundation

/// `cloud-agent-bench`: one subcommand per figure of BENCHMARKS.md. Each measures the product and,
/// where a figure has one, its raw baseline in the same run on the same machine, and prints a
/// table (or, with `--json`, one JSON object per figure per line).
@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cloud-agent-bench",
        abstract: "Benchmarks of cloud-agent against raw baselines (see BENCHMARKS.md).",
        subcommands: [
            HeartbeatsBench.self, StreamBench.self, IdleBench.self, ScaleBench.self, ColdStartBench.self, ClusterBench.self,
            ReportCommand.self, HeartbeatClientsCommand.self,
        ]
    )
}

/// The options every benchmark takes.
struct BenchOptions: ParsableArguments {
    @Flag(help: "A small configuration (for CI); without it, the full one of the issue.")
    var quick = false

    @Flag(help: "Print one JSON object per figure per line instead of a table.")
    var json = false

    @Option(help: "Log level of the in-process control plane (trace … critical).")
    var logLevel: String = "error"

    /// Logs go to stderr so that `--json` output stays clean.
    func note(_ text: String) {
        FileHandle.standardError.write(Data("[bench] \(text)\n".utf8))
    }

    func emit(_ figures: [Figure]) {
        if json {
            for figure in figures { print(figure.jsonLine) }
        } else {
            print(Figure.table(figures))
        }
    }
}
