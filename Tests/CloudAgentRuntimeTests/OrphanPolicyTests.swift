import CloudAgentTestSupport
import CloudAgentRuntime
import Testing

/// `OrphanPolicy` with plain values of `now`: when a runtime without a control plane stops itself.
@Suite("Orphan policy: a runtime on its own")
struct OrphanPolicyTests {
    let t0 = ContinuousClock.now
    let policy = OrphanPolicy(idleTimeout: .seconds(10), orphanLimit: .seconds(60))

    func at(_ seconds: Double) -> ContinuousClock.Instant { t0 + .milliseconds(Int64(seconds * 1000)) }

    /// A runtime started at t0 and welcomed at once.
    var connected: OrphanPolicy.State {
        var state = OrphanPolicy.State(startedAt: t0)
        state.disconnectedSince = nil
        return state
    }

    @Test func whileConnectedTheControlPlaneDecides() {
        var state = connected
        state.lastExecutionEndedAt = at(1)
        #expect(policy.evaluate(state, now: at(5_000)) == .connected)
    }

    @Test func neverConnected_idleFromTheStart_limitFromTheStart() {
        let state = OrphanPolicy.State(startedAt: t0)
        #expect(state.disconnectedSince == t0)
        #expect(policy.evaluate(state, now: at(3)) == .wait(until: at(10)))
        #expect(policy.evaluate(state, now: at(10)) == .stop(.idle(idle: .seconds(10), idleTimeout: .seconds(10))))
    }

    @Test func neverWelcomed_theIdleStopWaitsForTheControlPlanesConnectDeadline() {
        // The control plane gives a launched runtime 30 s to connect; its idle timeout is 10 s.
        let patient = OrphanPolicy(idleTimeout: .seconds(10), orphanLimit: .seconds(60), connectTimeout: .seconds(30))
        let state = OrphanPolicy.State(startedAt: t0)
        #expect(patient.evaluate(state, now: at(10)) == .wait(until: at(30)))
        #expect(patient.evaluate(state, now: at(29.999)) == .wait(until: at(30)))
        #expect(patient.evaluate(state, now: at(30)) == .stop(.idle(idle: .seconds(30), idleTimeout: .seconds(10))))
        // Once welcomed, the idle timeout alone counts again.
        var welcomed = state
        welcomed.firstWelcomedAt = at(1)
        welcomed.disconnectedSince = at(2)
        #expect(patient.evaluate(welcomed, now: at(11)) == .stop(.idle(idle: .seconds(10), idleTimeout: .seconds(10))))
        // The orphan limit is not moved by it.
        let short = OrphanPolicy(idleTimeout: .seconds(10), orphanLimit: .seconds(20), connectTimeout: .seconds(30))
        #expect(short.evaluate(state, now: at(15)) == .wait(until: at(20)))
        #expect(short.evaluate(state, now: at(20)) == .stop(.orphanLimit(disconnected: .seconds(20), orphanLimit: .seconds(20))))
    }

    @Test func idleIsMeasuredFromTheLatestOfStartExecutionStartAndEnd() {
        var state = connected
        state.lastExecutionStartedAt = at(20)
        state.lastExecutionEndedAt = at(30)
        state.disconnectedSince = at(35)
        #expect(state.lastActivity == at(30))
        #expect(policy.evaluate(state, now: at(36)) == .wait(until: at(40)))
        #expect(policy.evaluate(state, now: at(41)) == .stop(.idle(idle: .seconds(11), idleTimeout: .seconds(10))))
        // Idle for long already when the control plane went away: it stops at once.
        state.disconnectedSince = at(500)
        #expect(policy.evaluate(state, now: at(500)) == .stop(.idle(idle: .seconds(470), idleTimeout: .seconds(10))))
    }

    @Test func theFirstWelcomeCountsAsActivity_asTheControlPlanesRuntimeStart() {
        var state = OrphanPolicy.State(startedAt: t0)
        state.firstWelcomedAt = at(3)
        state.disconnectedSince = at(4)
        #expect(state.lastActivity == at(3))
        #expect(policy.evaluate(state, now: at(12)) == .wait(until: at(13)))
        #expect(policy.evaluate(state, now: at(13)) == .stop(.idle(idle: .seconds(10), idleTimeout: .seconds(10))))
    }

    @Test func neverIdleWhileAnExecutionIsActive_butTheOrphanLimitHolds() {
        var state = connected
        state.executionActive = true
        state.lastExecutionStartedAt = at(1)
        state.disconnectedSince = at(5)
        #expect(policy.evaluate(state, now: at(30)) == .wait(until: at(65)))
        #expect(policy.evaluate(state, now: at(64.999)) == .wait(until: at(65)))
        #expect(policy.evaluate(state, now: at(65)) == .stop(.orphanLimit(disconnected: .seconds(60), orphanLimit: .seconds(60))))
    }

    @Test func unacknowledgedEventsHoldTheIdleStop_notTheOrphanLimit() {
        var state = connected
        state.lastExecutionEndedAt = at(2)
        state.disconnectedSince = at(1)
        state.unacknowledgedEvents = 3
        // A control plane that comes back within the limit still gets every event.
        #expect(policy.evaluate(state, now: at(20)) == .wait(until: at(61)))
        #expect(policy.evaluate(state, now: at(61)) == .stop(.orphanLimit(disconnected: .seconds(60), orphanLimit: .seconds(60))))
        state.unacknowledgedEvents = 0
        #expect(policy.evaluate(state, now: at(20)) == .stop(.idle(idle: .seconds(18), idleTimeout: .seconds(10))))
    }

    @Test func theEarlierDeadlineIsTheNextLook() {
        let short = OrphanPolicy(idleTimeout: .seconds(100), orphanLimit: .seconds(5))
        var state = connected
        state.disconnectedSince = at(2)
        #expect(short.evaluate(state, now: at(3)) == .wait(until: at(7)))
        #expect(short.evaluate(state, now: at(7)) == .stop(.orphanLimit(disconnected: .seconds(5), orphanLimit: .seconds(5))))
        // The orphan limit counts from the last disconnect, not from the first.
        state.disconnectedSince = at(6)
        #expect(short.evaluate(state, now: at(7)) == .wait(until: at(11)))
    }

    @Test func aLongerIdleTimeoutFromTheControlPlaneMovesTheIdleDeadline() {
        var state = OrphanPolicy.State(startedAt: t0)
        var changed = policy
        changed.idleTimeout = .seconds(30)
        #expect(policy.evaluate(state, now: at(15)) == .stop(.idle(idle: .seconds(15), idleTimeout: .seconds(10))))
        #expect(changed.evaluate(state, now: at(15)) == .wait(until: at(30)))
        state.disconnectedSince = nil
        #expect(changed.evaluate(state, now: at(15)) == .connected)
    }
}
