import CloudAgentCore
import CloudAgentSandbox
import Foundation
import Logging
import Synchronization

/// The auto-commit after an execution, run after the commit that ended it (an effect): git in
/// the sandbox and the push, with no lock held, then `SessionReducer.autoCommitted` records the
/// outcome as an event, with the execution's callback. The session's next execution is held
/// back until then, so it starts on the committed tree. Redone after a crash (the session's
/// `autoCommitPending` says so); committing again when there is nothing new commits nothing.
package final class AutoCommitRunner: Sendable {
    package let ledger: SessionLedger
    package let host: any RuntimeHost
    package let secretBox: SecretBox
    package let logger: Logger
    private let running = Mutex<Set<SessionID>>([])

    package init(ledger: SessionLedger, host: any RuntimeHost, secretBox: SecretBox, logger: Logger) {
        self.ledger = ledger
        self.host = host
        self.logger = logger
        self.secretBox = secretBox
    }

    /// Commits after `executionId` and records the outcome through `engine`.
    package func run(_ id: SessionID, executionId: ExecutionID, engine: Engine) async {
        guard running.withLock({ $0.insert(id).inserted }) else { return }
        defer { _ = running.withLock { $0.remove(id) } }
        do {
            guard let session = try await ledger.store.session(id), session.autoCommitPending == executionId,
                let execution = try await ledger.store.execution(executionId)
            else { return }
            // The workspace is on the runtime's host: another live host commits it (it hears of
            // the change); a lost host's workspace is gone, and the outcome says so.
            if case .elsewhere = ledger.cluster.placement(ofHost: session.runtime.hostNode, now: ledger.clock.now()) { return }
            let event = await commit(after: execution, session: session)
            try await engine.perform(id) { state, context in
                SessionReducer.autoCommitted(state, execution: execution, event: event, context: context).withoutNotes
            }
        } catch {
            logger.error("recording auto-commit failed", metadata: ["sessionId": "\(id)", "error": "\(String(reflecting: error))"])
        }
    }

    /// Commits the workspace's changes on the work branch (and pushes when there is a remote).
    /// The outcome is an event, never a change of the execution's status.
    private func commit(after execution: Execution, session: SessionRecord) async -> NewEvent {
        let branch = session.workBranch ?? "session/\(session.id.rawValue)"
        let now = ledger.clock.now()
        let event: NewEvent
        do {
            let request = try WorkspaceRequest(session: session.id, spec: session.spec, workBranch: branch, opening: secretBox)
            switch await host.autoCommit(request, executionId: execution.id, summary: execution.prompt) {
            case .nothingToCommit:
                event = NewEvent(executionId: execution.id, type: "git.nothing_to_commit", at: now, data: ["branch": .string(branch)])
            case .committed(let sha, let pushed, nil):
                event = NewEvent(
                    executionId: execution.id, type: "git.committed", at: now,
                    data: [
                        "sha": .string(sha), "branch": .string(branch), "pushed": .bool(pushed),
                    ])
            case .committed(let sha, _, let pushError?):
                event = NewEvent(
                    executionId: execution.id, type: "git.push_failed", at: now,
                    data: [
                        "sha": .string(sha), "branch": .string(branch), "error": .string(pushError),
                    ])
            case .failed(let step, let detail):
                event = NewEvent(
                    executionId: execution.id, type: "git.commit_failed", at: now,
                    data: [
                        "step": .string(step), "error": .string(detail), "branch": .string(branch),
                    ])
            }
        } catch {
            event = NewEvent(executionId: execution.id, type: "git.commit_failed", at: now, data: ["error": .string("\(error)")])
        }
        logger.info("auto-commit", metadata: ["sessionId": "\(session.id)", "executionId": "\(execution.id)", "outcome": "\(event.type)"])
        return event
    }
}
