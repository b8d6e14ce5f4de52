import CloudAgentTestSupport
import CloudAgentCore
import Foundation
import Testing

/// The benchmark executable works end to end: a shrunk `idle` run (simulated runtimes for the
/// precision part, one real runtime for the false-kill part, a real slow cold start) prints one JSON object per figure
/// with the names and fields. Timing figures are not checked: CI machines are noisy.
@Suite("cloud-agent-bench", .processes)
struct BenchSmokeTests {
    static let bench = TestServer.buildProducts.appendingPathComponent("cloud-agent-bench")

    @Test("idle --json: one figure per line, the issue's names and fields, no false kill",
          .enabled(if: FileManager.default.isExecutableFile(atPath: bench.path), "cloud-agent-bench is not built"))
    func idleJSON() async throws {
        let output = try await shell(
            "\(Self.bench.path) idle --quick --json --sessions 20 --spread 0.2 --idle-timeout-ms 200 --runtimes 1 --kill-idle-timeout-ms 500 "
                + "--cold-start-sessions 10 --cold-start-seconds 4 2>/dev/null"
        )
        let figures = output.split(separator: "\n").filter { $0.hasPrefix("{") }.compactMap {
            try? JSONDecoder().decode(JSONValue.self, from: Data($0.utf8)).objectValue
        }
        #expect(figures.map { $0["name"]?.stringValue } == [
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
