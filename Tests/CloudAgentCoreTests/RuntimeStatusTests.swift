import CloudAgentCore
import Foundation
import Testing

/// `RuntimeStatus` state by state: what each transition and change of data makes of it, and
/// that every one of them is refused, as an `IllegalTransition`, in a state it is not valid in.
@Suite("Runtime status: transitions")
struct RuntimeStatusTests {
    static let process = RuntimeProcess(pid: 4242, startTime: 99)
    static let idle = StopReason(rule: .idle, at: Fixture.at(minutes(20)), lastActivityAt: Fixture.at(minutes(5)), idleMs: minutes(15))
    static let crashed = StopReason(rule: .crashed, at: Fixture.at(minutes(2)), detail: "runtime did not connect")

    /// A start requested at 1 s, launched (`i-1`, on node `a`, in `bwrap`) at 3 s.
    static func launchedStart() throws -> RuntimeStatus {
        var runtime = RuntimeStatus.neverStarted
        try runtime.requestStart(at: Fixture.at(seconds(1)))
        try runtime.recordLaunching(instanceId: "i-1", secretHash: "h-1", hostNode: "a")
        try runtime.recordLaunched(process, sandbox: "bwrap", at: Fixture.at(seconds(3)))
        return runtime
    }

    /// That start's runtime connected to node `b` at 4 s, with 7 events recorded.
    static func connected() throws -> RuntimeStatus {
        var runtime = try launchedStart()
        try runtime.markRunning(at: Fixture.at(seconds(4)))
        try runtime.recordConnection(at: Fixture.at(seconds(4)), node: "b")
        runtime.recordAcknowledged(through: 7)
        return runtime
    }

    /// One runtime in each state, every field of its state set.
    static func sample(_ state: RuntimeState) throws -> RuntimeStatus {
        var runtime = try connected()
        switch state {
        case .starting: return try launchedStart()
        case .running: return runtime
        case .stopping: try runtime.beginStopping(idle)
        case .stopped: try runtime.markStopped(at: Fixture.at(minutes(20)), reason: idle)
        }
        return runtime
    }

    // MARK: Valid transitions

    @Test("never started → starting: a warm start with nothing of a launch yet")
    func firstStart() throws {
        var runtime = RuntimeStatus.neverStarted
        #expect(runtime == .stopped(RuntimeStatus.Stopped()))
        try runtime.requestStart(at: Fixture.t0)
        #expect(runtime == .starting(RuntimeStatus.Starting(requestedAt: Fixture.t0, cold: false, ackedSeq: 0)))
    }

    @Test("stopped after a run → starting: a cold start, with the last launch's sandbox and nodes until the new one records its own")
    func coldStart() throws {
        var runtime = try Self.sample(.stopped)
        try runtime.requestStart(at: Fixture.at(hours(1)))
        #expect(
            runtime
                == .starting(
                    RuntimeStatus.Starting(requestedAt: Fixture.at(hours(1)), cold: true, ackedSeq: 0, sandbox: "bwrap", hostNode: "a", connectedNode: "b")
                ))
    }

    @Test("stopped after a launch that never connected → starting: not a cold start (nothing ran)")
    func startAfterAFailedLaunch() throws {
        var runtime = try Self.launchedStart()
        try runtime.markStopped(at: Fixture.at(minutes(2)), reason: Self.crashed)
        try runtime.requestStart(at: Fixture.at(minutes(3)))
        #expect(runtime.cold == false)
    }

    @Test("starting: the launch is recorded before its spawn (replacing the last launch's host, even with none), then its process")
    func launchRecorded() throws {
        var runtime = try Self.sample(.stopped)
        try runtime.requestStart(at: Fixture.at(hours(1)))
        try runtime.recordLaunching(instanceId: "i-2", secretHash: "h-2", hostNode: nil)
        #expect(
            runtime
                == .starting(
                    RuntimeStatus.Starting(
                        requestedAt: Fixture.at(hours(1)), cold: true, instanceId: "i-2", secretHash: "h-2", sandbox: "bwrap", hostNode: nil,
                        connectedNode: "b")))
        try runtime.recordLaunched(RuntimeProcess(pid: 7, startTime: 1), sandbox: "none", at: Fixture.at(hours(1) + seconds(2)))
        #expect(runtime.process == RuntimeProcess(pid: 7, startTime: 1))
        #expect(runtime.sandbox == "none")
        #expect(runtime.launchedAt == Fixture.at(hours(1) + seconds(2)))
    }

    @Test("starting → running: connected, with its launch as it was recorded")
    func connects() throws {
        var runtime = try Self.launchedStart()
        try runtime.markRunning(at: Fixture.at(seconds(4)))
        #expect(
            runtime
                == .running(
                    RuntimeStatus.Running(
                        startedAt: Fixture.at(seconds(4)), requestedAt: Fixture.at(seconds(1)), cold: false, launchedAt: Fixture.at(seconds(3)),
                        instanceId: "i-1", secretHash: "h-1", process: Self.process, ackedSeq: 0, connectedAt: Fixture.at(seconds(4)),
                        sandbox: "bwrap", hostNode: "a")))
    }

    @Test("running: a reconnect moves connectedAt and the node, never startedAt; a process recorded after the hello lands")
    func reconnectsAndLateLaunch() throws {
        var runtime = RuntimeStatus.neverStarted
        try runtime.requestStart(at: Fixture.t0)
        try runtime.recordLaunching(instanceId: "i-1", secretHash: "h-1", hostNode: "a")
        try runtime.markRunning(at: Fixture.at(seconds(1)))
        try runtime.recordLaunched(Self.process, sandbox: "bwrap", at: Fixture.at(seconds(2)))
        try runtime.recordConnection(at: Fixture.at(minutes(5)), node: "c")
        #expect(runtime.startedAt == Fixture.at(seconds(1)))
        #expect(runtime.connectedAt == Fixture.at(minutes(5)))
        #expect(runtime.connectedNode == "c")
        #expect(runtime.process == Self.process)
        #expect(runtime.launchedAt == Fixture.at(seconds(2)))
    }

    @Test("running → stopping: the reason, with the launch whose processes are to be taken down")
    func runningStops() throws {
        var runtime = try Self.connected()
        try runtime.beginStopping(Self.idle)
        #expect(
            runtime
                == .stopping(
                    RuntimeStatus.Stopping(
                        startedAt: Fixture.at(seconds(4)), requestedAt: Fixture.at(seconds(1)), cold: false, launchedAt: Fixture.at(seconds(3)),
                        stopReason: Self.idle, instanceId: "i-1", secretHash: "h-1", process: Self.process, ackedSeq: 7,
                        connectedAt: Fixture.at(seconds(4)), sandbox: "bwrap", hostNode: "a", connectedNode: "b")))
    }

    @Test("starting → stopping: a runtime that never connected has no startedAt")
    func startingStops() throws {
        var runtime = try Self.launchedStart()
        try runtime.beginStopping(Self.crashed)
        #expect(runtime.state == .stopping)
        #expect(runtime.startedAt == nil)
        #expect(runtime.connectedAt == nil)
        #expect(runtime.stopReason == Self.crashed)
        #expect(runtime.process == Self.process)
    }

    @Test("stopping → stopped: the decided reason stays unless another is given; the process and secret go")
    func stoppingStops() throws {
        let stopping = try Self.sample(.stopping)
        var kept = stopping
        try kept.markStopped(at: Fixture.at(minutes(21)))
        #expect(
            kept
                == .stopped(
                    RuntimeStatus.Stopped(
                        startedAt: Fixture.at(seconds(4)), requestedAt: Fixture.at(seconds(1)), launchedAt: Fixture.at(seconds(3)),
                        stoppedAt: Fixture.at(minutes(21)), stopReason: Self.idle, instanceId: "i-1", cold: false, ackedSeq: 7,
                        connectedAt: Fixture.at(seconds(4)), sandbox: "bwrap", hostNode: "a", connectedNode: "b")))
        #expect(kept.process == nil)
        #expect(kept.secretHash == nil)
        var replaced = stopping
        let deleted = StopReason(rule: .deleted, at: Fixture.at(minutes(21)))
        try replaced.markStopped(at: Fixture.at(minutes(21)), reason: deleted)
        #expect(replaced.stopReason == deleted)
    }

    @Test("running → stopped and starting → stopped directly (a crash, a failed launch, a deletion)")
    func stopsDirectly() throws {
        var running = try Self.connected()
        let died = StopReason(rule: .crashed, at: Fixture.at(minutes(1)), detail: "exit 137")
        try running.markStopped(at: Fixture.at(minutes(1)), reason: died)
        #expect(running.state == .stopped)
        #expect(running.stopReason == died)
        #expect(running.startedAt == Fixture.at(seconds(4)))
        #expect(running.process == nil)

        var starting = try Self.launchedStart()
        try starting.markStopped(at: Fixture.at(minutes(2)), reason: Self.crashed)
        #expect(starting.state == .stopped)
        #expect(starting.startedAt == nil)
        #expect(starting.instanceId == "i-1")
        #expect(starting.secretHash == nil)
    }

    @Test("events are acknowledged and the host moved in every state", arguments: RuntimeState.allCases)
    func acknowledgedAndMovedInEveryState(state: RuntimeState) throws {
        var runtime = try Self.sample(state)
        runtime.recordAcknowledged(through: 12)
        runtime.moveHost(to: "z")
        #expect(runtime.state == state)
        #expect(runtime.ackedSeq == 12)
        #expect(runtime.hostNode == "z")
    }

    // MARK: Invalid transitions

    /// A transition or change of data, by name.
    enum Transition: String, CaseIterable, Sendable {
        case requestStart, markRunning, beginStopping, markStopped, recordLaunching, recordLaunched, recordConnection

        /// What `IllegalTransition.to` names.
        var target: String {
            switch self {
            case .requestStart: "starting"
            case .markRunning: "running"
            case .beginStopping: "stopping"
            case .markStopped: "stopped"
            case .recordLaunching: "launching"
            case .recordLaunched: "launched"
            case .recordConnection: "connection"
            }
        }

        /// The states it is valid in.
        var validIn: Set<RuntimeState> {
            switch self {
            case .requestStart: [.stopped]
            case .markRunning, .recordLaunching: [.starting]
            case .beginStopping, .recordLaunched: [.starting, .running]
            case .markStopped: [.starting, .running, .stopping]
            case .recordConnection: [.running]
            }
        }

        func apply(to runtime: inout RuntimeStatus) throws(IllegalTransition) {
            let at = Fixture.at(hours(2))
            switch self {
            case .requestStart: try runtime.requestStart(at: at)
            case .markRunning: try runtime.markRunning(at: at)
            case .beginStopping: try runtime.beginStopping(StopReason(rule: .operator, at: at))
            case .markStopped: try runtime.markStopped(at: at, reason: StopReason(rule: .operator, at: at))
            case .recordLaunching: try runtime.recordLaunching(instanceId: "i-9", secretHash: "h-9", hostNode: "n")
            case .recordLaunched: try runtime.recordLaunched(RuntimeProcess(pid: 9, startTime: 9), sandbox: "none", at: at)
            case .recordConnection: try runtime.recordConnection(at: at, node: "n")
            }
        }
    }

    /// A transition and a state it is not valid in.
    struct Refusal: Sendable, CustomTestStringConvertible {
        var transition: Transition
        var state: RuntimeState
        var testDescription: String { "\(transition.rawValue) while \(state.rawValue)" }

        static let all: [Refusal] = Transition.allCases.flatMap { transition in
            RuntimeState.allCases.filter { !transition.validIn.contains($0) }.map { Refusal(transition: transition, state: $0) }
        }
    }

    @Test("every transition is refused in a state it is not valid in: thrown, naming both, nothing changed", arguments: Refusal.all)
    func refused(_ refusal: Refusal) throws {
        let before = try Self.sample(refusal.state)
        var runtime = before
        #expect(throws: IllegalTransition(from: refusal.state.rawValue, to: refusal.transition.target)) {
            try refusal.transition.apply(to: &runtime)
        }
        #expect(runtime == before)
    }

    @Test("every transition is allowed in the states it is valid in", arguments: Transition.allCases)
    func allowed(_ transition: Transition) throws {
        for state in transition.validIn {
            var runtime = try Self.sample(state)
            try transition.apply(to: &runtime)
        }
        // The refusals and these cover every state for every transition.
        #expect(Refusal.all.filter { $0.transition == transition }.count + transition.validIn.count == RuntimeState.allCases.count)
    }
}
