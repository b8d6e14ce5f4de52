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
    @Suite("Reliability: API fuzzing")
    struct ReliabilityFuzzTests {
        static let part = "api-fuzz"
        static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

        /// Why the fuzz run cannot happen here, or nil when it can.
        static let skipReason: String? = {
            if ProcessInfo.processInfo.environment["RELIABILITY_FUZZ"] == "0" { return "RELIABILITY_FUZZ=0" }
            let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
            let found = path.split(separator: ":").contains { FileManager.default.isExecutableFile(atPath: "\($0)/python3") }
            return found ? nil : "python3 is not on PATH: scripts/fuzz-api.sh needs it to install schemathesis"
        }()

        @Test(
            "schemathesis against /openapi.yaml of a running serve: no 5xx, responses match the schema, statuses are documented, the server stays up",
            .enabled(if: skipReason == nil, Comment(rawValue: skipReason ?? ""))
        )
        func schemathesis() async throws {
            let directory = try TemporaryDirectory()
            defer {
                Reliability.killProcesses(under: directory.url)
                withExtendedLifetime(directory) {}
            }
            let report = directory.url.appendingPathComponent("report")
            let seed = Reliability.seed(Self.part) % 1_000_000_000
            let output = directory.url.appendingPathComponent("fuzz.out")
            _ = FileManager.default.createFile(atPath: output.path, contents: nil)
            let handle = try FileHandle(forWritingTo: output)
            defer { try? handle.close() }

            // Working in `directory`, with its temporary files there too: every process of the run
            // (the script, serve, schemathesis, the runtimes) works inside it, so that
            // `Reliability.killProcesses(under:)` takes the whole run down whatever happens.
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/bash")
            process.arguments = [Self.packageRoot.appendingPathComponent("scripts/fuzz-api.sh").path]
            process.currentDirectoryURL = directory.url
            var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("CLOUD_AGENT_") }
            environment["TMPDIR"] = directory.url.path
            environment["FUZZ_REPORT_DIR"] = report.path
            environment["FUZZ_SEED"] = String(seed)
            environment["FUZZ_MAX_EXAMPLES"] = environment["FUZZ_MAX_EXAMPLES"] ?? "15"
            environment["FUZZ_MAX_TIME"] = environment["FUZZ_MAX_TIME"] ?? "60"
            environment["CLOUD_AGENT_BIN"] = TestServer.buildProducts.appendingPathComponent("cloud-agent").path
            process.environment = environment
            process.standardInput = FileHandle.nullDevice
            process.standardOutput = handle
            process.standardError = handle
            try process.run()
            defer {
                if process.isRunning {
                    Reliability.killProcesses(under: directory.url)
                    process.waitUntilExit()
                }
            }
            // The install (first run only), the server's start, the fuzz budget, the clean-up.
            try await eventually(within: 420, "scripts/fuzz-api.sh to finish") { !process.isRunning }
            let text = (try? String(contentsOf: output, encoding: .utf8)) ?? ""
            #expect(!process.isRunning)
            #expect(process.terminationReason == .exit && process.terminationStatus == 0, "scripts/fuzz-api.sh failed (\(process.terminationStatus)):\n\(text.suffix(12_000))")
            #expect(text.contains("server still up after fuzzing"), "\(text.suffix(4000))")
            for line in text.split(separator: "\n") where line.contains(" generated, ") || line.hasPrefix("fuzz-api:") || line.contains("passed") && line.contains("✅") {
                Reliability.report(Self.part, line.trimmingCharacters(in: .whitespaces))
            }
        }
    }
}
