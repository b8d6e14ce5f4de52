import ArgumentParser
import CloudAgentCore
import CloudAgentPostgres
import CloudAgentServer
import Foundation
import Logging
import ServiceLifecycle
import UnixSignals
#if canImport(Glibc)
import Glibc
#endif

/// A node of several on one PostgreSQL database, composed as a serving node is: a store that
/// knows its node id (its changes notify the other nodes, the wake-ups it writes are claimed
/// for it), `PostgresCluster` as its membership (registry, heartbeats, LISTEN), and the control
/// plane on them. `serve` does not compose this yet (`StoreFactory.withNode` gives every node a
/// `SingleNode`), so the bench does: in this process (`cluster`'s stream part) or as a child
/// process (`_cluster-node`), which the failover part kills.
enum ClusterNode {
    /// The control plane and the task running its store's connection pool (cancel it after the
    /// control plane stopped).
    static func compose(_ configuration: ServerConfiguration, logger: Logger) async throws -> (plane: ControlPlane, pool: Task<Void, Never>) {
        guard let url = configuration.databaseURL else { throw BenchFailure("a cluster node needs a postgres:// database URL") }
        let postgres = try PostgresConfiguration(url: url)
        let nodeId = try DataDirectory(configuration.dataDirectory).nodeId()
        let store = try PostgresSessionStore(configuration: postgres, logger: logger, nodeId: nodeId, wakeUpLeaseMs: configuration.nodeLeaseMs)
        let pool = Task { await store.run() }
        do {
            try await store.migrate()
            let membership = PostgresCluster(store: store, configuration: postgres, nodeId: nodeId, heartbeatMs: configuration.nodeHeartbeatMs, logger: logger)
            return (try await ControlPlane.open(configuration, store: store, membership: membership, logger: logger), pool)
        } catch {
            pool.cancel()
            throw error
        }
    }

    /// A node in this process, listening on a free port.
    struct InProcess: Sendable {
        let plane: ControlPlane
        let running: RunningService
        let pool: Task<Void, Never>

        var webSocketBase: String { "ws://127.0.0.1:\(running.port)" }

        static func start(_ configuration: ServerConfiguration, logLevel: String) async throws -> InProcess {
            let logger = InProcessServer.logger(logLevel)
            let (plane, pool) = try await compose(configuration, logger: logger)
            do {
                let (ports, continuation) = AsyncStream<Int>.makeStream()
                let app = plane.buildApplication { port in
                    continuation.yield(port)
                    continuation.finish()
                }
                return InProcess(plane: plane, running: try await RunningService.start(app, ports: ports, logger: logger), pool: pool)
            } catch {
                pool.cancel()
                throw error
            }
        }

        func stop() async {
            await running.stop()
            pool.cancel()
        }
    }

    /// A node as a child process (`_cluster-node`), configured by `CLOUD_AGENT_*` variables as
    /// `serve` is.
    final class Child: Sendable {
        let process: Process
        let log: URL
        let port: Int
        let nodeId: String

        var baseURL: String { "http://127.0.0.1:\(port)" }

        private init(process: Process, log: URL, port: Int, nodeId: String) {
            self.process = process
            self.log = log
            self.port = port
            self.nodeId = nodeId
        }

        /// Starts a node and waits until `/readyz` answers.
        static func start(name: String, environment: [String: String], runtime: URL, dataDirectory: URL, logDirectory: URL) async throws -> Child {
            let log = logDirectory.appendingPathComponent("\(name).log")
            _ = FileManager.default.createFile(atPath: log.path, contents: nil)
            let process = Process()
            process.executableURL = Products.ownExecutable
            process.arguments = ["_cluster-node", "--runtime", runtime.path]
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
                    return Child(process: process, log: log, port: port, nodeId: nodeId)
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

/// `_cluster-node` (internal): one node of `cluster`'s failover part, configured by the
/// environment as `serve` is (`CLOUD_AGENT_*`), announcing its port as `serve` does.
struct ClusterNodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "_cluster-node", shouldDisplay: false)

    @Option var runtime: String

    func run() async throws {
        var configuration: ServerConfiguration
        do {
            configuration = try ServerConfiguration.resolve(flags: [:], environment: ProcessInfo.processInfo.environment)
        } catch {
            throw ValidationError(error.description)
        }
        configuration.runtimeExecutable = URL(fileURLWithPath: runtime)
        let level = configuration.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "cloud-agent")
        let (plane, pool) = try await ClusterNode.compose(configuration, logger: logger)
        let host = configuration.host
        let app = plane.buildApplication { port in
            FileHandle.standardOutput.write(Data("cloud-agent listening on http://\(host):\(port)\n".utf8))
        }
        let group = ServiceGroup(configuration: .init(services: [app], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        pool.cancel()
    }
}
