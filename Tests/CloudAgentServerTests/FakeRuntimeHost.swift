import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentProtocol
import CloudAgentSandbox
import Foundation
import Logging
import Synchronization
import Testing

@testable import CloudAgentEngine
@testable import CloudAgentServer

/// A door a step waits at until the test opens it; the test can wait for the steps to arrive.
/// Nothing sleeps: both sides wait on continuations.
final class Gate: Sendable {
    private struct State {
        var open: Bool
        var arrived = 0
        var passers: [CheckedContinuation<Void, Never>] = []
        var watchers: [(count: Int, continuation: CheckedContinuation<Void, Never>)] = []
    }

    private let state: Mutex<State>

    init(open: Bool = true) { state = Mutex(State(open: open)) }

    /// Waits until the gate is open.
    func pass() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let (go, watchers) = state.withLock { state -> (Bool, [CheckedContinuation<Void, Never>]) in
                state.arrived += 1
                let ready = state.watchers.filter { $0.count <= state.arrived }.map(\.continuation)
                state.watchers.removeAll { $0.count <= state.arrived }
                if !state.open { state.passers.append(continuation) }
                return (state.open, ready)
            }
            for watcher in watchers { watcher.resume() }
            if go { continuation.resume() }
        }
    }

    func open() {
        let passers = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.open = true
            defer { state.passers.removeAll() }
            return state.passers
        }
        for passer in passers { passer.resume() }
    }

    func close() { state.withLock { $0.open = false } }

    var arrived: Int { state.withLock { $0.arrived } }

    /// Returns once `count` steps have arrived at the gate (passed or waiting), or fails the test
    /// after `seconds`.
    func arrival(_ count: Int, within seconds: Double = 10, sourceLocation: SourceLocation = #_sourceLocation) async {
        let arrived = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let now = self.state.withLock { state -> Bool in
                        if state.arrived >= count { return true }
                        state.watchers.append((count, continuation))
                        return false
                    }
                    if now { continuation.resume() }
                }
                return true
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(seconds))
                return false
            }
            let first = await group.next() ?? false
            if !first {
                // Let the arrival task go.
                let waiting = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
                    defer { state.watchers.removeAll() }
                    return state.watchers.map(\.continuation)
                }
                for continuation in waiting { continuation.resume() }
            }
            group.cancelAll()
            return first
        }
        #expect(arrived, "\(count) arrivals at the gate within \(seconds) s (got \(self.arrived))", sourceLocation: sourceLocation)
    }
}

/// A `RuntimeHost` without processes or files: launches are fake pids, workspaces a set, and
/// each slow step (prepare, restore, launch, terminate) waits at a gate the test controls.
/// Background jobs are tracked, so a test can wait until every one has finished.
final class FakeRuntimeHost: RuntimeHost {
    struct State {
        var workspaces: Set<SessionID> = []
        var live: [Int32: SessionID] = [:]
        var mostLive = 0
        var launches = 0
        var nextPid: Int32 = 400_000
        var jobs = 0
        var idleWaiters: [CheckedContinuation<Void, Never>] = []
    }

    let state = Mutex(State())
    let prepareGate = Gate()
    let restoreGate = Gate()
    let launchGate = Gate()
    let terminateGate = Gate()

    var sandboxKind: String { "none" }

    func prepareWorkspace(_ request: WorkspaceRequest) async throws {
        await prepareGate.pass()
        _ = state.withLock { $0.workspaces.insert(request.sessionId) }
    }

    func restoreWorkspace(_ request: WorkspaceRequest) async -> [SetupFailure] {
        await restoreGate.pass()
        _ = state.withLock { $0.workspaces.insert(request.sessionId) }
        return []
    }

    func removeWorkspace(_ session: SessionID) { _ = state.withLock { $0.workspaces.remove(session) } }

    func autoCommit(_ request: WorkspaceRequest, executionId: ExecutionID, summary: String) async -> AutoCommitOutcome { .nothingToCommit }

    func launch(_ request: RuntimeLaunchRequest) async throws -> RuntimeProcess {
        await launchGate.pass()
        return state.withLock { state in
            state.nextPid += 1
            state.launches += 1
            state.live[state.nextPid] = request.session
            state.mostLive = max(state.mostLive, state.live.count)
            return RuntimeProcess(pid: state.nextPid, startTime: UInt64(state.nextPid))
        }
    }

    func terminate(session: SessionID, process: RuntimeProcess, sandbox: String?, graceMs: Int64) async -> Bool {
        await terminateGate.pass()
        _ = state.withLock { $0.live.removeValue(forKey: process.pid) }
        return true
    }

    func isAlive(_ process: RuntimeProcess) -> Bool { state.withLock { $0.live[process.pid] != nil } }
    /// A fake host keeps no runtime log.
    func runtimeLog(_ session: SessionID, lines: Int) async -> String? { nil }
    func adopt(session: SessionID, process: RuntimeProcess) async {}
    func unwatch(session: SessionID) async {}
    func watchedProcess(session: SessionID) async -> RuntimeProcess? { nil }

    func enqueue(_ job: @escaping @Sendable () async -> Void) {
        state.withLock { $0.jobs += 1 }
        Task {
            await job()
            let waiters = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.jobs -= 1
                guard state.jobs == 0 else { return [] }
                defer { state.idleWaiters.removeAll() }
                return state.idleWaiters
            }
            for waiter in waiters { waiter.resume() }
        }
    }

    /// Waits until no background job runs (each one's effects have been carried out).
    func settle() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let idle = state.withLock { state -> Bool in
                if state.jobs == 0 { return true }
                state.idleWaiters.append(continuation)
                return false
            }
            if idle { continuation.resume() }
        }
    }

    var liveProcesses: [SessionID] { state.withLock { Array($0.live.values) } }
    func hasWorkspace(_ id: SessionID) -> Bool { state.withLock { $0.workspaces.contains(id) } }
}

/// The session logic on the in-memory store with a fake host and a manual clock: no processes,
/// no sleeps, no scheduler loop (the test fires the rules), interleavings chosen by the test.
struct EngineHarness {
    let memory = InMemorySessionStore()
    /// The store as the engine sees it.
    var store: any SessionStore { memory }
    let host = FakeRuntimeHost()
    let clock = ManualClock()
    let engine: SessionEngine
    /// The engine's heartbeat batcher and wake-up scheduler, on `clock`; not running unless a
    /// test runs them (`TimingRuleTests`).
    let heartbeats: HeartbeatBatcher
    let scheduler: WakeUpScheduler
    let owner = Owner(user: "local")
    let timing: Timing

    init(maxRuntimes: Int = 4, timing: Timing = Timing(idleTimeoutMs: 60_000, pendingTimeoutMs: 5000, stopGraceMs: 100)) throws {
        self.timing = timing
        let logger = Logger(label: "engine-test")
        heartbeats = HeartbeatBatcher(store: memory, clock: clock, logger: logger)
        scheduler = WakeUpScheduler(store: memory, clock: clock, logger: logger)
        engine = SessionEngine(
            store: memory, host: host, timing: timing, clock: clock, secretBox: try SecretBox(base64Key: SecretBox.generateBase64Key()),
            agents: try AgentRegistry.resolve(agentsFile: nil, environment: [:], runtimeExecutable: "/nonexistent/cloud-agent-runtime", logger: logger),
            heartbeats: heartbeats, scheduler: scheduler,
            maxRuntimes: maxRuntimes, metrics: ServerMetrics(), logger: logger
        )
    }

    var sessions: SessionService { engine.sessions }

    /// A prepared session whose launch has been recorded (its runtime `starting`).
    func create(_ body: JSONValue = ["prompt": "say hi"]) async throws -> SessionID {
        let session = try await sessions.create(owner: owner, input: try SessionInput.parseCreate(body))
        await host.settle()
        return session.id
    }

    func session(_ id: SessionID) async throws -> SessionRecord? { try await store.session(id) }

    /// The runtime of the session's current launch connects (hello); returns its connection and
    /// the frames the control plane sends it.
    func connect(_ id: SessionID) async throws -> (RuntimeConnection, AsyncStream<ControlMessage>) {
        let instanceId = try #require(try await store.session(id)?.runtime.instanceId, "session \(id) has no launch")
        let (frames, continuation) = AsyncStream<ControlMessage>.makeStream()
        let connection = RuntimeConnection(sessionId: id, instanceId: instanceId, outgoing: continuation)
        #expect(try await engine.gateway.hello(connection, activeExecutionId: nil))
        return (connection, frames)
    }

    /// A session with a running runtime.
    func running(_ body: JSONValue = ["prompt": "say hi"]) async throws -> (SessionID, RuntimeConnection) {
        let id = try await create(body)
        let (connection, _) = try await connect(id)
        return (id, connection)
    }

    /// The runtime reports that `execution` ended (completed).
    func complete(_ execution: ExecutionID, on connection: RuntimeConnection) async throws {
        let acked = try await store.session(connection.sessionId)?.runtime.ackedSeq ?? 0
        try await engine.gateway.ingest(
            [
                RuntimeEvent(seq: acked + 1, executionId: execution.rawValue, kind: RuntimeEvent.Kind.running, at: clock.now()),
                RuntimeEvent(
                    seq: acked + 2, executionId: execution.rawValue, kind: RuntimeEvent.Kind.ended, at: clock.now(),
                    data: ["status": .string("completed"), "exitCode": .number(0)]),
            ], from: connection)
    }

    /// Fires the session's rules now; waits for the background effects.
    @discardableResult
    func evaluate(_ id: SessionID) async -> Date? {
        let next = await engine.rules.evaluate(id)
        await host.settle()
        return next
    }
}
