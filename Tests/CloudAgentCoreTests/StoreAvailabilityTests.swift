import CloudAgentCore
import Foundation
import Synchronization
import Testing

@Suite("The store's availability: its downtime is the control plane's")
struct StoreAvailabilityTests {
    final class Clock: WallClock {
        private let current = Mutex(Date(millisecondsSince1970: 1_800_000_000_000))
        func now() -> Date { current.withLock { $0 } }
        func advance(_ milliseconds: Int64) { current.withLock { $0 = $0.adding(milliseconds: milliseconds) } }
    }

    @Test("never away: no return to count from; away: now; back: from the first answer after the outage, until the next one")
    func outages() {
        let clock = Clock()
        let availability = StoreAvailability(clock: clock)
        availability.answered()
        #expect(availability.answeringSince == nil)
        #expect(!availability.isDown)

        clock.advance(1000)
        let failedAt = clock.now()
        availability.failed()
        clock.advance(3000)
        availability.failed()
        #expect(availability.isDown)
        #expect(availability.downSince == failedAt, "the outage began at the first failure")
        #expect(availability.answeringSince == clock.now(), "while away, a decision treats now as the return")

        clock.advance(2000)
        let back = clock.now()
        availability.answered()
        clock.advance(500)
        availability.answered()
        #expect(!availability.isDown)
        #expect(availability.answeringSince == back)
        #expect(availability.downSince == nil)
    }

    @Test("a running execution whose runtime could not be heard while the store was away is judged from the store's return")
    func staleFromTheReturn() throws {
        let timing = Timing(heartbeatIntervalMs: 100, staleThresholdMs: 3000)
        let start = Date(millisecondsSince1970: 1_800_000_000_000)
        var execution = Execution(id: ExecutionID(at: start), sessionId: SessionID(), prompt: "p", acceptedAt: start)
        try execution.markRunning(at: start)
        execution.lastHeartbeat = start.adding(milliseconds: 1000)
        // The store was away from 1.1 s to 7 s: the heartbeats of that span could not be written.
        let back = start.adding(milliseconds: 7000)
        let now = start.adding(milliseconds: 8000)
        let judgedFromStart = ExecutionLiveness.evaluate(execution, timing: timing, controlPlaneStartedAt: start, now: now)
        #expect(judgedFromStart.failure != nil, "the failure this rule prevents")
        let judgedFromReturn = ExecutionLiveness.evaluate(execution, timing: timing, controlPlaneStartedAt: back, now: now)
        #expect(judgedFromReturn.failure == nil)
        #expect(judgedFromReturn.nextDeadline.map { $0 <= back.adding(milliseconds: 3000) } == true)
    }
}
