import CloudAgentTestSupport
import Foundation
import Testing
#if canImport(Glibc)
    import Glibc
#endif

extension ReliabilityHarness {
    /// Part 3 of the reliability harness: `scripts/fuzz-api.sh` runs schemathesis against the
    /// OpenAPI document of a real `cloud-agent serve` (no 5xx, responses match the schema, statuses
    /// are documented, the server stays up). The runtime protocol's decoder has its own fuzz test
    /// (`ProtocolCodingTests.randomBytesMutationsAndTruncationsNeverCrash`), and the real server's
    /// runtime route gets garbage frames in `ReliabilityHostileInputTests.hostileFrames`.
    @Suite("Reliability: API fuzzing", .processes)
    struct ReliabilityFuzzTests {
        static let part = "api-fuzz"
        /// Why the fuzz run cannot happen here, or nil when it can.
        static let skipReason = Reliability.pythonScriptSkipReason(
            switchedOffBy: "RELIABILITY_FUZZ", script: "scripts/fuzz-api.sh", installs: "schemathesis"
        )

        @Test(
            "schemathesis against /openapi.yaml of a running serve: no 5xx, responses match the schema, statuses are documented, the server stays up",
            .long, .enabled(if: skipReason == nil, Comment(rawValue: skipReason ?? ""))
        )
        func schemathesis() async throws {
            let directory = try TemporaryDirectory()
            defer {
                Reliability.killProcesses(under: directory.url)
                withExtendedLifetime(directory) {}
            }
            let report = directory.url.appendingPathComponent("report")
            let seed = Reliability.seed(Self.part) % 1_000_000_000
            var environment: [String: String] = [
                "FUZZ_REPORT_DIR": report.path, "FUZZ_SEED": String(seed),
                "CLOUD_AGENT_BIN": TestServer.buildProducts.appendingPathComponent("cloud-agent").path,
            ]
            environment["FUZZ_MAX_EXAMPLES"] = ProcessInfo.processInfo.environment["FUZZ_MAX_EXAMPLES"] ?? "15"
            environment["FUZZ_MAX_TIME"] = ProcessInfo.processInfo.environment["FUZZ_MAX_TIME"] ?? "60"
            // The install (first run only), the server's start, the fuzz budget, the clean-up.
            let run = try await Reliability.runScript("fuzz-api.sh", in: directory.url, environment: environment, within: 420)
            let process = run.process
            let text = run.output
            #expect(!process.isRunning)
            #expect(
                process.terminationReason == .exit && process.terminationStatus == 0,
                "scripts/fuzz-api.sh failed (\(process.terminationStatus)):\n\(text.suffix(12_000))")
            #expect(text.contains("server still up after fuzzing"), "\(text.suffix(4000))")
            for line in text.split(separator: "\n")
            where line.contains(" generated, ") || line.hasPrefix("fuzz-api:") || line.contains("passed") && line.contains("✅") {
                Reliability.report(Self.part, line.trimmingCharacters(in: .whitespaces))
            }
        }
    }
}
