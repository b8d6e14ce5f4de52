import CloudAgentCLI
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import Logging
#if canImport(Glibc)
    import Glibc
#endif

/// A node of several on one PostgreSQL database: in this process (`cluster`'s stream part), an
/// `InProcessServer` started `asNode`; or a `cloud-agent serve` child process (the failover part
/// kills one).
enum ClusterNode {
    /// A `cloud-agent serve` child process, configured by `CLOUD_AGENT_*` variables.
    final class Child: Sendable {
        let process: Process
        let port: Int
        let nodeId: String

        var baseURL: String { "http://127.0.0.1:\(port)" }

        private init(process: Process, port: Int, nodeId: String) {
            self.process = process
            self.port = port
            self.nodeId = nodeId
        }

        /// Starts `serve` and waits until `/readyz` answers.
        static func start(name: String, serve: URL, environment: [String: String], dataDirectory: URL, logDirectory: URL) async throws -> Child {
            let log = logDirectory.appendingPathComponent("\(name).log")
            _ = FileManager.default.createFile(atPath: log.path, contents: nil)
            let process = Process()
            process.executableURL = serve
            process.arguments = ["serve"]
            process.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("CLOUD_AGENT_") }
                .merging(environment) { $1 }
                .merging(["CLOUD_AGENT_DATA_DIR": dataDirectory.path, "CLOUD_AGENT_HOST": "127.0.0.1", "CLOUD_AGENT_PORT": "0"]) { $1 }
            let output = try FileHandle(forWritingTo: log)
            process.standardOutput = output
            process.standardError = output
            try process.run()
            @Sendable func text() -> String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }
            for _ in 0..<6000 {
                guard process.isRunning else { throw BenchFailure("node \(name) exited: \(text().suffix(2000))") }
                if let range = text().range(of: "listening on http://127.0.0.1:"), let port = Int(text()[range.upperBound...].prefix { $0.isNumber }),
                    await BenchAPI.status(of: "http://127.0.0.1:\(port)/readyz", timeoutMs: 500) == 200
                {
                    let nodeId = try String(contentsOf: dataDirectory.appendingPathComponent("node-id"), encoding: .utf8)
                        .trimmingCharacters(in: .whitespacesAndNewlines)
                    return Child(process: process, port: port, nodeId: nodeId)
                }
                try await Task.sleep(for: .milliseconds(10))
            }
            kill(process.processIdentifier, SIGKILL)
            throw BenchFailure("node \(name) was not ready within 60 s: \(text().suffix(2000))")
        }

        /// SIGKILL: the node dies as a crashed machine's would, without a word to anyone.
        func killHard() {
            guard process.isRunning else { return }
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }

        /// SIGTERM, then SIGKILL after 15 s.
        func stop() async {
            guard process.isRunning else { return }
            kill(process.processIdentifier, SIGTERM)
            if !(await waitUntil(15, everyMs: 50) { !self.process.isRunning }) { killHard() }
        }
    }
}
