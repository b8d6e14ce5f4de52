import CloudAgentTestSupport
import CloudAgentCore
import Foundation
import Testing

/// The benchmark executable works end to end: every subcommand, on SQLite and on PostgreSQL,
/// runs its quick configuration and prints one JSON object per figure with the fields every
/// figure has; a shrunk `idle` run (simulated runtimes for the precision part, one real runtime
/// for the false-kill part, a real slow cold start) prints exactly its figures. Timing figures
/// are not checked: test machines are noisy, and speed is the benchmarks' own business.
@Suite("cloud-agent-bench", .processes)
struct BenchSmokeTests {
    static let bench = TestServer.buildProducts.appendingPathComponent("cloud-agent-bench")

    /// Every subcommand `scripts/benchmarks.sh` runs, in its quick configuration.
    static let subcommands = [
        "heartbeats", "stream", "idle", "scale", "coldstart",
        "heartbeats --postgres", "stream --postgres", "idle --postgres", "scale --postgres", "cluster --postgres",
    ]

    @Test(
        "every subcommand --quick --json exits 0 within 4 minutes and prints only well-formed figures",
        .enabled(if: FileManager.default.isExecutableFile(atPath: bench.path), "cloud-agent-bench is not built"),
        arguments: subcommands
    )
    func quickRun(_ subcommand: String) async throws {
        let directory = try TemporaryDirectory()
        let errors = directory.url.appendingPathComponent("stderr")
        let output: String
        do {
            output = try await shell(
                "timeout --kill-after=10 240 \(Self.bench.path) \(subcommand) --quick --json 2>\"\(errors.path)\"", in: directory.url
            )
        } catch {
            let tail = ((try? String(contentsOf: errors, encoding: .utf8)) ?? "").split(separator: "\n").suffix(40).joined(separator: "\n")
            Issue.record("cloud-agent-bench \(subcommand) failed: \(error)\n--- stderr (last 40 lines)\n\(tail)")
            return
        }
        let lines = output.split(separator: "\n").filter { $0.hasPrefix("{") }
        #expect(!lines.isEmpty, "no figure line: \(output)")
        let name = /^[a-z_]+(\.[a-z0-9_]+)+$/
        for line in lines {
            let figure = try #require(try? JSONDecoder().decode(JSONValue.self, from: Data(line.utf8)).objectValue, "not a JSON object: \(line)")
            #expect(Set(figure.keys) == ["name", "value", "unit", "baseline", "ratio", "params"], "\(line)")
            #expect(figure["name"]?.stringValue.map { $0.wholeMatch(of: name) != nil } == true, "\(line)")
            #expect(figure["value"]?.doubleValue != nil, "a numeric value: \(line)")
            #expect(figure["unit"]?.stringValue != nil, "\(line)")
            #expect(figure["params"]?.objectValue != nil, "\(line)")
        }
    }

    @Test(
        "idle --json: one figure per line, the issue's names and fields, no false kill",
        .enabled(if: FileManager.default.isExecutableFile(atPath: bench.path), "cloud-agent-bench is not built"))
    func idleJSON() async throws {
        let output = try await shell(
            "\(Self.bench.path) idle --quick --json --sessions 20 --spread 0.2 --idle-timeout-ms 200 --runtimes 1 --kill-idle-timeout-ms 500 "
                + "--cold-start-sessions 10 --cold-start-seconds 4 2>/dev/null"
        )
        let figures = output.split(separator: "\n").filter { $0.hasPrefix("{") }.compactMap {
            try? JSONDecoder().decode(JSONValue.self, from: Data($0.utf8)).objectValue
        }
        #expect(
            figures.map { $0["name"]?.stringValue } == [
                "idle.stop_lag_p99_ms", "idle.stop_lag_max_ms", "idle.false_kills",
                "idle.stop_lag_p99_ms_during_slow_cold_start", "idle.stop_lag_max_ms_during_slow_cold_start",
            ])
        for figure in figures {
            #expect(Set(figure.keys) == ["name", "value", "unit", "baseline", "ratio", "params"])
            #expect(figure["params"]?.objectValue?.isEmpty == false)
        }
        #expect(figures.first { $0["name"] == "idle.false_kills" }?["value"] == 0)
        #expect(figures.last?["params"]?.objectValue?["idleStops"] == 10)
        #expect(figures.last?["params"]?.objectValue?["slowSessionStateWhenAllWereStopped"] == "starting")
        #expect(figures.first?["params"]?.objectValue?["idleStops"] == 20)
    }
}
