import CloudAgentCore
import CloudAgentProtocol
import Foundation
import Logging
import Prometheus

extension SessionService {
    // MARK: The rules, applied

    /// Evaluates a session's rules at now, carries out what they decide, persists the session's
    /// next wake-up and returns it. Idempotent: evaluating again changes nothing.
    public func evaluate(_ id: SessionID) async -> Date? {
        metrics.wakeUpsFired.increment()
        do {
            return try await locks.withLock(id) {
                // Each action is a transition done once; a few rounds settle any chain of them.
                for _ in 0..<4 {
                    guard let session = try await self.store.session(id) else { return nil }
                    let snapshot = SessionSnapshot(
                        session: session,
                        latestExecution: try await self.currentExecution(of: session),
                        oldestEventAt: try await self.store.oldestEventAt(of: id)
                    )
                    let now = self.clock.now()
                    let evaluation = SessionRules.evaluate(
                        snapshot, timing: self.timing, controlPlaneStartedAt: self.controlPlaneStartedAt, now: now
                    )
                    if evaluation.actions.isEmpty {
                        if try await self.store.wakeUp(of: id) != evaluation.nextWakeUp {
                            try await self.commit(SessionChange(sessionId: id, wakeUp: .some(evaluation.nextWakeUp)))
                        }
                        return evaluation.nextWakeUp
                    }
                    for action in evaluation.actions {
                        guard try await self.carryOut(action, on: snapshot, now: now) else { return nil }
                    }
                }
                return self.clock.now().adding(milliseconds: 1000)
            }
        } catch {
            logger.error("evaluating a session failed; retrying in 1 s", metadata: ["sessionId": "\(id)", "error": "\(String(reflecting: error))"])
            return clock.now().adding(milliseconds: 1000)
        }
    }

    /// Carries out one decided action. Returns false when the session is gone.
    private func carryOut(_ action: SessionAction, on snapshot: SessionSnapshot, now: Date) async throws -> Bool {
        var session = snapshot.session
        let id = session.id
        switch action {
        case .failExecution(let executionId, let error):
            guard var execution = snapshot.latestExecution, execution.id == executionId else { return true }
            try execution.end(.failed, at: now, error: error, reportedByRuntime: false)
            await supervisor.connection(for: id)?.send(.kill(executionId: executionId.rawValue, reason: error))
            session.activeExecutionId = nil
            session.updatedAt = now
            try await commitSignallingCallbacks(SessionChange(
                sessionId: id, session: session, executions: [execution],
                events: [NewEvent(executionId: executionId, type: EventType.executionFailed, at: now, data: ["error": .string(error)])],
                callbacks: try callbacks(for: execution, session: session)
            ))
            metrics.executionEnded(.failed)
            logger.warning("execution failed by the liveness rule", metadata: ["sessionId": "\(id)", "executionId": "\(executionId)", "error": "\(error)"])
        case .reportStuck(let executionId, let silenceMs):
            guard var execution = snapshot.latestExecution, execution.id == executionId else { return true }
            execution.stuckReportedAt = now
            try await commit(SessionChange(
                sessionId: id, executions: [execution],
                events: [NewEvent(executionId: executionId, type: EventType.executionStuck, at: now, data: ["sinceLastProgressMs": JSONValue(silenceMs)])]
            ))
            logger.warning("execution without progress", metadata: ["sessionId": "\(id)", "executionId": "\(executionId)", "sinceLastProgressMs": "\(silenceMs)"])
        case .stopRuntime(let reason):
            // The decision lands now (state `stopping`, reason recorded); the processes are
            // taken down by a supervisor job, which records `runtime.stopped`.
            guard try await beginStopping(id, reason: reason) else { return true }
            supervisor.enqueue { [self] in await self.finishStopping(id) }
        case .expire(let untouchedMs):
            try await remove(session, rule: .ttl)
            metrics.sessionsExpired.increment()
            logger.info("session expired", metadata: ["sessionId": "\(id)", "rule": "ttl", "untouchedMs": "\(untouchedMs)"])
            return false
        case .sweepEvents(let cutoff):
            let count = try await store.deleteEvents(of: id, olderThan: cutoff)
            metrics.eventsSwept.increment(by: Int64(count))
            logger.debug("events swept", metadata: ["sessionId": "\(id)", "count": "\(count)"])
        }
        return true
    }

    static func stopEventData(_ reason: StopReason) -> [String: JSONValue] {
        [
            "rule": .string(reason.rule.rawValue), "lastActivityAt": JSONValue(reason.lastActivityAt),
            "idleMs": JSONValue(reason.idleMs), "idleTimeoutMs": JSONValue(reason.idleTimeoutMs), "detail": JSONValue(reason.detail),
        ]
    }
}
