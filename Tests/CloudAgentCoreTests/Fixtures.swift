import CloudAgentCore
import Foundation
import Testing

// Plain values shared by the core's suites. No test reads a clock: every instant is built from
// `Fixture.t0` and a whole number of milliseconds.

func seconds(_ count: Int64) -> Int64 { count * 1_000 }
func minutes(_ count: Int64) -> Int64 { count * 60_000 }
func hours(_ count: Int64) -> Int64 { count * 3_600_000 }
func days(_ count: Int64) -> Int64 { count * 86_400_000 }

enum Fixture {
    /// 2026-01-02T03:04:05Z, time zero of every scenario.
    static let t0 = Date(millisecondsSince1970: 1_767_323_045_000)

    /// The instant `offset` milliseconds after `t0` (before it when negative).
    static func at(_ offset: Int64) -> Date { t0.adding(milliseconds: offset) }

    static let sessionId = SessionID(uuid: UUID(uuidString: "3F2504E0-4F89-41D3-9A0C-0305E82C3301")!)
    static let otherSessionId = SessionID(uuid: UUID(uuidString: "9B2C6A1E-0D3F-4E5A-8B7C-112233445566")!)

    /// A pending execution accepted at `acceptedAt`, with a reproducible id.
    static func execution(acceptedAt: Date, sessionId: SessionID = Fixture.sessionId, prompt: String = "say hello") -> Execution {
        var generator = SeededGenerator(seed: UInt64(acceptedAt.millisecondsSince1970))
        return Execution(
            id: ExecutionID(at: acceptedAt, using: &generator), sessionId: sessionId, prompt: prompt, acceptedAt: acceptedAt
        )
    }

    /// An execution accepted at `acceptedAt` that the runtime started at `runningAt`.
    static func runningExecution(acceptedAt: Date, runningAt: Date) throws -> Execution {
        var execution = execution(acceptedAt: acceptedAt)
        try execution.markRunning(at: runningAt)
        return execution
    }

    /// A runtime that connected at `startedAt` (requested two seconds before): of launch
    /// `instanceId` with `process`, hosted by `hostNode`, connected to `connectedNode`.
    static func runningRuntime(
        since startedAt: Date, instanceId: String? = nil, process: RuntimeProcess? = nil, hostNode: String? = nil, connectedNode: String? = nil
    ) -> RuntimeStatus {
        .running(
            RuntimeStatus.Running(
                startedAt: startedAt, requestedAt: startedAt.adding(milliseconds: -seconds(2)), cold: false, instanceId: instanceId, process: process,
                connectedAt: startedAt, hostNode: hostNode, connectedNode: connectedNode
            ))
    }

    /// A runtime in `state`, for the tests that go through the states: requested at
    /// `requestedAt`; connected at `startedAt` when running (or stopping, or stopped, after it
    /// ran); stopping or stopped for `stopReason` (an operator's stop at `requestedAt` unless
    /// given); stopped at `stoppedAt`.
    static func runtime(
        _ state: RuntimeState, requestedAt: Date = Fixture.t0, startedAt: Date? = nil, stopReason: StopReason? = nil, stoppedAt: Date? = nil
    ) -> RuntimeStatus {
        switch state {
        case .stopped:
            .stopped(RuntimeStatus.Stopped(startedAt: startedAt, requestedAt: requestedAt, stoppedAt: stoppedAt, stopReason: stopReason))
        case .starting:
            .starting(RuntimeStatus.Starting(requestedAt: requestedAt, cold: false))
        case .running:
            .running(RuntimeStatus.Running(startedAt: startedAt ?? requestedAt, requestedAt: requestedAt, cold: false, connectedAt: startedAt ?? requestedAt))
        case .stopping:
            .stopping(
                RuntimeStatus.Stopping(
                    startedAt: startedAt, requestedAt: requestedAt, cold: false, stopReason: stopReason ?? StopReason(rule: .operator, at: requestedAt),
                    connectedAt: startedAt))
        }
    }

    static func session(createdAt: Date = Fixture.t0, spec: SessionSpec = SessionSpec(prompt: "say hello"), runtime: RuntimeStatus = .neverStarted)
        -> SessionRecord
    {
        SessionRecord(id: sessionId, owner: .local, createdAt: createdAt, spec: spec, runtime: runtime)
    }
}

/// SplitMix64: reproducible randomness for the random part of execution ids.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension IdlePolicy.Decision {
    /// The stop reason when the decision is `.stop`.
    var stopReason: StopReason? {
        if case .stop(let reason) = self { reason } else { nil }
    }

    /// The deadline when the decision is `.idleAt`.
    var deadline: Date? {
        if case .idleAt(let deadline, _) = self { deadline } else { nil }
    }
}

/// Runs a transition on a copy of `value` and returns the `IllegalTransition` it threw, or nil.
func illegalTransition<Value>(_ value: Value, _ transition: (inout Value) throws -> Void) -> IllegalTransition? {
    var copy = value
    do {
        try transition(&copy)
        return nil
    } catch let error as IllegalTransition {
        return error
    } catch {
        Issue.record("expected an IllegalTransition, got \(error)")
        return nil
    }
}
