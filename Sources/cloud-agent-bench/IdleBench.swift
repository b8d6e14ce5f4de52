import ArgumentParser
import CloudAgentCore
import CloudAgentServer
import Foundation
import GRDB
import NIOHTTP1
#if canImport(Glibc)
import Glibc
#endif

/// `idle`: (a) precision of the idle stop: many sessions with a short idle timeout whose
/// runtimes are an in-process simulation (`InProcessSimulatedRuntimeFleet`), stopped by the
/// real wake-up scheduler; the lag is stop time − idle deadline, from the stored stop reasons.
/// (b) no false kills: real `cloud-agent-runtime` processes whose executions stay silent for
/// twice the idle timeout; a runtime stopped while its execution was active is a false kill.
struct IdleBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "idle", abstract: "Idle-stop precision (simulated runtimes) and false kills (real runtimes)."
    )

    @OptionGroup var options: BenchOptions
    @Option(help: "Sessions for the precision part (default: 10000, quick: 300).") var sessions: Int?
    @Option(help: "Seconds over which their runtimes connect (default: 20, quick: 3).") var spread: Double?
    @Option(help: "Idle timeout of the precision part, ms (default: 5000, quick: 1000).") var idleTimeoutMs: Int64?
    @Option(help: "Real runtimes for the false-kill part (default: 200, quick: 5).") var runtimes: Int?
    @Option(help: "Idle timeout of the false-kill part, ms (default: 5000, quick: 2000).") var killIdleTimeoutMs: Int64?
    @Option(help: "Sandbox of the real runtimes: none, bwrap, auto.") var sandbox: String = "none"

    func run() async throws {
        let precision = try await measurePrecision()
        let kills = try await measureFalseKills()
        options.emit(precision + [kills])
    }

    // MARK: (a) Precision

    func measurePrecision() async throws -> [Figure] {
        let count = sessions ?? (options.quick ? 300 : 10_000)
        let spread = self.spread ?? (options.quick ? 3 : 20)
        let idleTimeout = idleTimeoutMs ?? (options.quick ? 1000 : 5000)
        let scratch = try ScratchDirectory("idle-precision")
        defer { scratch.remove() }
        let configuration = InProcessServer.configuration(directory: scratch.url)
        let server = try await InProcessServer.start(configuration, logLevel: options.logLevel)
        options.note("idle (a): \(count) simulated runtimes connecting over \(spread) s, idle timeout \(idleTimeout) ms")
        do {
            let fleet = InProcessSimulatedRuntimeFleet(plane: server.plane, idleTimeoutMs: idleTimeout)
            try await fleet.connect(count, over: spread)
            let database = try DatabaseQueue(path: configuration.sqlitePath!)
            let settled = await waitUntil(Double(idleTimeout) / 1000 + 120, everyMs: 200) {
                let live = (try? await database.read { db in
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM sessions WHERE runtime_state IN ('starting', 'running', 'stopping')")
                }) ?? nil
                return live == 0
            }
            guard settled else { throw BenchFailure("not every simulated runtime was stopped within the bound") }

            var lags = Latencies(), decisions = Latencies()
            var idleStops = 0, otherStops = 0, early = 0, seen = 0
            var cursor: SessionCursor?
            for _ in 0..<10_000 {
                let page = try await server.plane.store.sessions(owner: .local, limit: 200, after: cursor)
                for session in page {
                    seen += 1
                    guard let reason = session.runtime.stopReason, reason.rule == .idle, let last = reason.lastActivityAt,
                          let timeout = reason.idleTimeoutMs, let stoppedAt = session.runtime.stoppedAt
                    else {
                        otherStops += 1
                        continue
                    }
                    idleStops += 1
                    let deadline = last.adding(milliseconds: timeout)
                    let lag = stoppedAt.milliseconds(since: deadline), decided = reason.at.milliseconds(since: deadline)
                    if lag < 0 || decided < 0 { early += 1 }
                    lags.record(micros: UInt64(max(0, lag)) * 1000)
                    decisions.record(micros: UInt64(max(0, decided)) * 1000)
                }
                guard let last = page.last, page.count == 200 else { break }
                cursor = SessionCursor(after: last)
            }
            await server.stop()
            let params: [String: JSONValue] = [
                "sessions": .number(Double(count)), "connectSpreadSeconds": .number(spread), "idleTimeoutMs": .number(Double(idleTimeout)),
                "runtimes": "InProcessSimulatedRuntimeFleet (state set running through the store; the real WakeUpScheduler stops them)",
                "stopTime": "runtime.stoppedAt (the stop recorded, runtime.stopped emitted)",
                "idleStops": .number(Double(idleStops)), "otherStops": .number(Double(otherStops)), "earlyStops": .number(Double(early)),
                "sessionsRead": .number(Double(seen)), "lag": .object(lags.summary), "decisionLag": .object(decisions.summary),
                "resolution": "1 ms (stored timestamps)",
            ]
            guard idleStops > 0 else { throw BenchFailure("no idle stop was recorded") }
            return [
                Figure("idle.stop_lag_p99_ms", lags.percentileMs(99), unit: "ms", params: params),
                Figure("idle.stop_lag_max_ms", lags.maxMs, unit: "ms", params: params),
            ]
        } catch {
            await server.stop()
            throw error
        }
    }

    // MARK: (b) False kills

    func measureFalseKills() async throws -> Figure {
        let count = runtimes ?? (options.quick ? 5 : 200)
        let idleTimeout = killIdleTimeoutMs ?? (options.quick ? 2000 : 5000)
        let silenceMs = 2 * idleTimeout
        guard let sandboxMode = SandboxMode(rawValue: sandbox) else { throw BenchFailure("unknown sandbox \(sandbox)") }
        let runtime = try Products.locate("cloud-agent-runtime", note: options.note)
        let scratch = try ScratchDirectory("idle-kills")
        defer { scratch.remove() }
        let timing = Timing(idleTimeoutMs: idleTimeout, heartbeatIntervalMs: 1000, staleThresholdMs: 10_000, pendingTimeoutMs: 300_000, stopGraceMs: 2000)
        let configuration = InProcessServer.configuration(
            directory: scratch.url, timing: timing, maxRuntimes: count + 8, sandbox: sandboxMode, runtime: runtime
        )
        let server = try await InProcessServer.start(configuration, logLevel: options.logLevel)
        let api = BenchAPI(baseURL: server.baseURL, token: InProcessServer.token)
        options.note("idle (b): \(count) real runtimes, executions silent for \(silenceMs) ms, idle timeout \(idleTimeout) ms")
        let prompt = "say start\nsleep \(Double(silenceMs) / 1000)\nsay done"
        do {
            // Create and initiate at once: a pending execution keeps its runtime busy from the start.
            let ids = try await withThrowingTaskGroup(of: [SessionID].self) { group in
                let workers = min(8, count)
                for worker in 0..<workers {
                    let share = count / workers + (worker < count % workers ? 1 : 0)
                    group.addTask {
                        var ids: [SessionID] = []
                        for _ in 0..<share {
                            let created = try await api.expect(201, .POST, "/v1/sessions", json: ["prompt": .string(prompt)])
                            guard let id = created["sessionId"]?.stringValue.flatMap(SessionID.init(rawValue:)) else { throw BenchFailure("no sessionId") }
                            try await api.expect(202, .POST, "/v1/sessions/\(id)/initiate")
                            ids.append(id)
                        }
                        return ids
                    }
                }
                var all: [SessionID] = []
                for try await ids in group { all += ids }
                return all
            }
            let store = server.plane.store
            let ended = await waitUntil(Double(silenceMs) / 1000 + 180, everyMs: 500) {
                for id in ids {
                    guard let session = try? await store.session(id), session.activeExecutionId == nil else { return false }
                }
                return true
            }
            guard ended else { throw BenchFailure("the executions did not all end in time") }

            var falseKills = 0, completed = 0, staleFailures = 0, otherOutcomes = 0
            var minSilenceMs = Int64.max
            for id in ids {
                let events = try await store.events(of: id, EventQuery(afterId: 0, limit: 1000))
                let terminal = events.firstIndex { [EventType.executionCompleted, EventType.executionFailed, EventType.executionInterrupted].contains($0.type) }
                let stop = events.firstIndex { $0.type == EventType.runtimeStopped }
                if let stop, terminal.map({ stop < $0 }) ?? true { falseKills += 1 }
                if let terminal {
                    switch events[terminal].type {
                    case EventType.executionCompleted: completed += 1
                    case EventType.executionFailed where (events[terminal].data["error"]?.stringValue ?? "").contains("heartbeat"): staleFailures += 1
                    default: otherOutcomes += 1
                    }
                }
                let texts = events.filter { $0.type == EventType.agent }
                if let start = texts.first(where: { $0.data["text"]?.stringValue == "start" }), let done = texts.first(where: { $0.data["text"]?.stringValue == "done" }) {
                    minSilenceMs = min(minSilenceMs, done.at.milliseconds(since: start.at))
                }
            }
            // Then idle cleanup does stop them (bounded).
            _ = await waitUntil(Double(idleTimeout) / 1000 + 30, everyMs: 250) {
                ((try? await store.sessions(withRuntimeIn: [.starting, .running, .stopping]))?.count ?? 1) == 0
            }
            var idleStopsAfter = 0
            for id in ids where (try? await store.session(id))?.runtime.stopReason?.rule == .idle { idleStopsAfter += 1 }
            await server.plane.killRuntimes()
            await server.stop()
            return Figure("idle.false_kills", Double(falseKills), unit: "runtimes", params: [
                "runtimes": .number(Double(count)), "idleTimeoutMs": .number(Double(idleTimeout)), "silenceMs": .number(Double(silenceMs)),
                "heartbeatIntervalMs": .number(Double(timing.heartbeatIntervalMs)), "staleThresholdMs": .number(Double(timing.staleThresholdMs)),
                "completed": .number(Double(completed)), "staleFailures": .number(Double(staleFailures)), "otherOutcomes": .number(Double(otherOutcomes)),
                "minObservedSilenceMs": .number(Double(minSilenceMs == .max ? 0 : minSilenceMs)),
                "idleStoppedAfterCompletion": .number(Double(idleStopsAfter)), "sandbox": .string(sandbox),
                "prompt": .string(prompt.replacingOccurrences(of: "\n", with: " / ")),
            ])
        } catch {
            await server.plane.killRuntimes()
            await server.stop()
            throw error
        }
    }
}

/// The runtimes of the precision part, simulated in this process: connecting a runtime is
/// recording it `running` (as `runtimeHello` does) through the store and poking the scheduler.
/// There is no process and no WebSocket, so that the figure is the scheduler's alone.
struct InProcessSimulatedRuntimeFleet {
    let plane: ControlPlane
    let idleTimeoutMs: Int64

    /// Connects `count` runtimes at a steady pace over `seconds`.
    func connect(_ count: Int, over seconds: Double) async throws {
        let start = ContinuousClock.now
        let interval = seconds / Double(max(1, count))
        let workers = 4
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<workers {
                group.addTask {
                    for index in stride(from: worker, to: count, by: workers) {
                        let due = start + .milliseconds(Int(Double(index) * interval * 1000))
                        if due > .now { try await Task.sleep(until: due) }
                        try await connectOne()
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    private func connectOne() async throws {
        let now = Date().truncatedToMilliseconds
        let id = SessionID()
        var session = SessionRecord(
            id: id, owner: .local, createdAt: now, spec: SessionSpec(prompt: "simulated", idleTimeoutMs: idleTimeoutMs),
            workBranch: "session/\(id.rawValue)"
        )
        try session.runtime.requestStart(at: now)
        session.runtime.instanceId = UUID().uuidString.lowercased()
        try session.runtime.markRunning(at: now)
        try await plane.store.insertSession(session)
        await plane.scheduler.poke(id)
    }
}
