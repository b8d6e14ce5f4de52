import ArgumentParser
import CloudAgentCore
import CloudAgentPostgres
import CloudAgentSQLite
import CloudAgentEngine
import CloudAgentServer
import Foundation
import GRDB
import Logging
import NIOCore
import NIOPosix
import PostgresNIO
import Synchronization
#if canImport(Glibc)
    import Glibc
#endif

/// `heartbeats`: many simulated runtimes (in a child process, so that this process's CPU time is
/// the server's alone) heartbeat their running executions as fast as their WebSockets take them,
/// against a real control plane in this process (SQLite, or PostgreSQL with `--postgres`).
/// Baseline: the raw database's batched single-column UPDATEs of `executions.last_heartbeat`
/// (GRDB, or postgres-nio), on the same schema, in the same run.
struct HeartbeatsBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "heartbeats", abstract: "Accepted heartbeats per second and CPU per heartbeat, against raw UPDATEs (GRDB or postgres-nio)."
    )

    @OptionGroup var options: BenchOptions
    @OptionGroup var backend: StoreOptions
    @Option(help: "Simulated runtimes (default: 1000, quick: 50).") var runtimes: Int?
    @Option(help: "Measured seconds (default: 10, quick: 3).") var seconds: Double?

    func run() async throws {
        let figures = try await backend.withDatabases(note: options.note) { databases in try await measure(databases) }
        options.emit(figures)
    }

    private func measure(_ databases: BenchDatabases) async throws -> [Figure] {
        let runtimes = self.runtimes ?? (options.quick ? 50 : 1000)
        let seconds = self.seconds ?? (options.quick ? 3 : 10)
        let warmup = options.quick ? 0.5 : 1.0
        let scratch = try ScratchDirectory("heartbeats")
        defer { scratch.remove() }

        // The control plane.
        let configuration = InProcessServer.configuration(directory: scratch.url, database: try await databases.fresh())
        let server = try await InProcessServer.start(configuration, logLevel: options.logLevel)
        let product: (perSecond: Double, cpuPerBeat: Double, accepted: Int, clients: ClientReport, written: Int)
        do {
            options.note("heartbeats: \(runtimes) simulated runtimes, \(seconds) s measured after \(warmup) s warm-up")
            let seats = try await SimulatedRuntimeSeat.insert(runtimes, into: server.plane.store)
            let spec = ClientSpec(
                url: server.webSocketBase + "/v1/runtime/connect", seats: seats, blastSeconds: warmup + seconds + 1,
                readyFile: scratch.url.appendingPathComponent("clients.ready").path
            )
            let specFile = scratch.url.appendingPathComponent("clients.json")
            try JSONEncoder().encode(spec).write(to: specFile)
            let reportFile = scratch.url.appendingPathComponent("clients.out")
            _ = FileManager.default.createFile(atPath: reportFile.path, contents: nil)
            let child = Process()
            child.executableURL = Products.ownExecutable
            child.arguments = ["_heartbeat-clients", "--spec", specFile.path]
            child.standardOutput = try FileHandle(forWritingTo: reportFile)
            child.standardError = FileHandle.standardError
            try child.run()
            defer { if child.isRunning { child.terminate() } }

            guard await waitUntil(120, everyMs: 10, { FileManager.default.fileExists(atPath: spec.readyFile) }) else {
                throw BenchFailure("the simulated runtimes did not all connect within 120 s")
            }
            try await Task.sleep(for: .milliseconds(Int(warmup * 1000)))
            let heartbeats = server.plane.heartbeats
            let accepted0 = await heartbeats.acceptedCount, cpu0 = Measure.cpuMicros(), t0 = ContinuousClock.now
            try await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            let accepted1 = await heartbeats.acceptedCount, cpu1 = Measure.cpuMicros(), elapsed = Measure.seconds(since: t0)
            guard await waitUntil(60, everyMs: 50, { !child.isRunning }) else { throw BenchFailure("the client process did not finish") }
            let clients = try JSONDecoder().decode(ClientReport.self, from: Data(contentsOf: reportFile))
            let accepted = accepted1 - accepted0
            guard accepted > 0 else { throw BenchFailure("no heartbeat was accepted") }
            // Proof that they were written: running executions with a recorded heartbeat.
            try await Task.sleep(for: .milliseconds(100))
            let raw = try RawDatabase.open(configuration)
            defer { raw.close() }
            let written = try await raw.count("SELECT COUNT(*) FROM executions WHERE status = 'running' AND last_heartbeat IS NOT NULL")
            for error in clients.errors { options.note("client error: \(error)") }
            product = (Double(accepted) / elapsed, (cpu1 - cpu0) / Double(accepted), accepted, clients, written)
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()

        // The baseline: the raw database on the same schema.
        let baselineDatabase = try await databases.fresh()
        let baseline: (perSecond: Double, cpuPerUpdate: Double, updates: Int)
        let baselineText: String
        if case .postgres(let postgres) = baselineDatabase {
            options.note("heartbeats: baseline, raw postgres-nio batched UPDATEs of \(runtimes) rows for \(seconds) s")
            baseline = try await Self.rawPostgresBaseline(rows: runtimes, seconds: seconds, database: postgres, directory: scratch.url)
            baselineText = "postgres-nio: one transaction per batch of \(runtimes) single-column UPDATEs on one connection, back to back"
        } else {
            options.note("heartbeats: baseline, raw GRDB batched UPDATEs of \(runtimes) rows for \(seconds) s")
            baseline = try await Self.rawGRDBBaseline(rows: runtimes, seconds: seconds, directory: scratch.url)
            baselineText = "GRDB: one transaction per batch of \(runtimes) single-column UPDATEs, back to back"
        }

        var params: [String: JSONValue] = [
            "runtimes": .number(Double(runtimes)), "seconds": .number(seconds), "acceptedHeartbeats": .number(Double(product.accepted)),
            "executionsWithHeartbeatWritten": .number(Double(product.written)), "clientHeartbeatsSent": .number(Double(product.clients.sent)),
            "clientsConnected": .number(Double(product.clients.connected)),
            "clientCpuUsPerHeartbeat": .number(Figure.rounded(product.clients.cpuMicros / Double(max(1, product.clients.sent)))),
            "clients": "separate process, WebSockets on loopback", "store": .string(databases.storeDescription),
            "baseline": .string(baselineText), "baselineUpdates": .number(Double(baseline.updates)),
        ]
        if backend.onPostgres { params["cpu"] = "this process only (the PostgreSQL server's processes are not counted, for the product or the baseline)" }
        return [
            Figure(backend.name("heartbeats.per_second"), product.perSecond, unit: "heartbeats/s", baseline: baseline.perSecond, params: params),
            Figure(
                backend.name("heartbeats.cpu_us_per_heartbeat"), product.cpuPerBeat, unit: "µs CPU (server process)", baseline: baseline.cpuPerUpdate,
                params: params),
        ]
    }

    /// `rows` running executions, inserted through `store` so that the schema and rows are the
    /// product's; returns their ids.
    private static func runningExecutions(_ rows: Int, in store: any SessionStore) async throws -> [String] {
        var ids: [String] = []
        let seats = try await SimulatedRuntimeSeat.insert(rows, into: store)
        for seat in seats {
            guard let id = ExecutionID(rawValue: seat.executionId), var execution = try await store.execution(id) else { continue }
            try execution.markRunning(at: Date())
            _ = try await store.commit(SessionChange(sessionId: seat.id, executions: [execution]))
            ids.append(seat.executionId)
        }
        return ids
    }

    /// `rows` running executions, then batches of single-column UPDATEs for `seconds`: updates per second and CPU per update.
    static func rawGRDBBaseline(rows: Int, seconds: Double, directory: URL) async throws -> (perSecond: Double, cpuPerUpdate: Double, updates: Int) {
        let path = directory.appendingPathComponent("baseline.sqlite").path
        let batch = try await runningExecutions(rows, in: try SQLiteSessionStore(path: path))
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        configuration.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = NORMAL") }
        let pool = try DatabasePool(path: path, configuration: configuration)
        let cpu0 = Measure.cpuMicros(), start = ContinuousClock.now
        var updates = 0
        for _ in 0..<10_000_000 {
            if Measure.seconds(since: start) >= seconds { break }
            let at = Date().millisecondsSince1970
            updates += try await pool.write { db in
                let statement = try db.cachedStatement(sql: "UPDATE executions SET last_heartbeat = ? WHERE id = ?")
                for id in batch { try statement.execute(arguments: [at, id]) }
                return batch.count
            }
        }
        let elapsed = Measure.seconds(since: start), cpu = Measure.cpuMicros() - cpu0
        return (Double(updates) / elapsed, cpu / Double(max(1, updates)), updates)
    }

    /// The same on PostgreSQL: the rows written through the product's store (its migrations
    /// applied), then `BEGIN`, one `UPDATE` per row, `COMMIT`, back to back on one connection of
    /// a postgres-nio pool, as `recordHeartbeats` writes a batch.
    static func rawPostgresBaseline(
        rows: Int, seconds: Double, database: PostgresConfiguration, directory: URL
    ) async throws -> (perSecond: Double, cpuPerUpdate: Double, updates: Int) {
        let configuration = InProcessServer.configuration(directory: directory.appendingPathComponent("baseline"), database: .postgres(database))
        let opened = try await OpenedStore.open(configuration, logger: InProcessServer.logger("error"))
        let batch: [String]
        do {
            batch = try await runningExecutions(rows, in: opened.store)
        } catch {
            await opened.close()
            throw error
        }
        await opened.close()
        let logger = PostgresServer.logger
        return try await withPostgresClient(database) { client in
            try await client.withConnection { connection in
                let cpu0 = Measure.cpuMicros(), start = ContinuousClock.now
                var updates = 0
                for _ in 0..<10_000_000 {
                    if Measure.seconds(since: start) >= seconds { break }
                    let at = Date().millisecondsSince1970
                    _ = try await connection.query("BEGIN", logger: logger).collect()
                    for id in batch {
                        _ = try await connection.query("UPDATE executions SET last_heartbeat = \(at) WHERE id = \(id)", logger: logger).collect()
                    }
                    _ = try await connection.query("COMMIT", logger: logger).collect()
                    updates += batch.count
                }
                let elapsed = Measure.seconds(since: start), cpu = Measure.cpuMicros() - cpu0
                return (Double(updates) / elapsed, cpu / Double(max(1, updates)), updates)
            }
        }
    }
}

/// What the parent hands the client process.
struct ClientSpec: Codable, Sendable {
    var url: String
    var seats: [SimulatedRuntimeSeat]
    var blastSeconds: Double
    var readyFile: String
}

/// What the client process reports (JSON on its stdout).
struct ClientReport: Codable, Sendable {
    var connected: Int
    var sent: Int
    var cpuMicros: Double
    var errors: [String]
}

/// `_heartbeat-clients` (internal): the simulated runtimes of `heartbeats`, in their own process.
/// Each connects, completes the handshake, waits for all the others, then writes heartbeat frames
/// back to back (each write waits for the socket: TCP is the only flow control) for `blastSeconds`.
struct HeartbeatClientsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "_heartbeat-clients", shouldDisplay: false)

    @Option var spec: String

    func run() async throws {
        let spec = try JSONDecoder().decode(ClientSpec.self, from: Data(contentsOf: URL(fileURLWithPath: spec)))
        let logger = InProcessServer.logger("error")
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let ready = Counter(), sent = Counter(), done = Counter()
        let gate = Gate(), never = Gate()
        let errors = Locked<[String]>([])
        let cpu0 = Measure.cpuMicros()
        await withTaskGroup(of: Void.self) { tasks in
            for seat in spec.seats {
                tasks.addTask {
                    do {
                        try await SimulatedRuntime.connect(url: spec.url, seat: seat, eventLoopGroup: group, logger: logger) { runtime in
                            ready.add(1)
                            await gate.wait()
                            let end = ContinuousClock.now + .milliseconds(Int(spec.blastSeconds * 1000))
                            var frame = runtime.heartbeatFrame()
                            var count = 0
                            for index in 0..<100_000_000 {
                                if index % 64 == 0 {
                                    // Writes that need no wait do not suspend: let the others run.
                                    await Task.yield()
                                    if ContinuousClock.now >= end { break }
                                    frame = runtime.heartbeatFrame(events: Int64(index))
                                }
                                try await runtime.send(frame)
                                count += 1
                            }
                            sent.add(count)
                            done.add(1)
                            // Stay connected: the process exits without closing (what the
                            // server has buffered but not read yet is not worth draining).
                            await never.wait()
                        }
                    } catch {
                        errors.withLock { $0.append("\(seat.sessionId): \(error)") }
                        ready.add(1)
                        done.add(1)
                    }
                }
            }
            tasks.addTask {
                _ = await waitUntil(110, everyMs: 10) { ready.count >= spec.seats.count }
                _ = FileManager.default.createFile(atPath: spec.readyFile, contents: nil)
                gate.open()
                _ = await waitUntil(spec.blastSeconds + 30, everyMs: 10) { done.count >= spec.seats.count }
                let report = ClientReport(
                    connected: spec.seats.count - errors.value.count, sent: sent.count,
                    cpuMicros: Measure.cpuMicros() - cpu0, errors: Array(errors.value.prefix(5))
                )
                FileHandle.standardOutput.write((try? JSONEncoder().encode(report)) ?? Data())
                FileHandle.standardError.write(Data("[clients] done: \(sent.count) sent\n".utf8))
                Glibc._exit(0)
            }
        }
    }
}

/// Many tasks wait; one `open()` lets them all through.
final class Gate: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let pass = state.withLock { state -> Bool in
                if state.open { return true }
                state.waiters.append(continuation)
                return false
            }
            if pass { continuation.resume() }
        }
    }

    func open() {
        let waiters = state.withLock { state in
            state.open = true
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}
