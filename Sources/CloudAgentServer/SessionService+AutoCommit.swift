import CloudAgentCore
import CloudAgentSandbox
import Foundation
import Logging

extension SessionService {
    /// With `autoCommit`, commits the workspace's changes on the work branch after an execution
    /// (and pushes when there is a remote). The outcome is an event, never a change of the
    /// execution's status. The caller holds the session's lock, so the next execution starts on
    /// the committed tree.
    func autoCommitIfAsked(after execution: Execution, session: SessionRecord) async {
        guard session.spec.autoCommit else { return }
        let branch = session.workBranch ?? "session/\(session.id.rawValue)"
        let now = clock.now()
        var event: NewEvent
        do {
            let request = try workspaceRequest(id: session.id, spec: session.spec, workBranch: branch)
            switch await workspaces.autoCommit(request, executionId: execution.id.rawValue, summary: execution.prompt) {
            case .nothingToCommit:
                event = NewEvent(executionId: execution.id, type: "git.nothing_to_commit", at: now, data: ["branch": .string(branch)])
            case .committed(let sha, let pushed, nil):
                event = NewEvent(executionId: execution.id, type: "git.committed", at: now, data: [
                    "sha": .string(sha), "branch": .string(branch), "pushed": .bool(pushed),
                ])
            case .committed(let sha, _, let pushError?):
                event = NewEvent(executionId: execution.id, type: "git.push_failed", at: now, data: [
                    "sha": .string(sha), "branch": .string(branch), "error": .string(pushError),
                ])
            case .failed(let step, let detail):
                event = NewEvent(executionId: execution.id, type: "git.commit_failed", at: now, data: [
                    "step": .string(step), "error": .string(detail), "branch": .string(branch),
                ])
            }
        } catch {
            event = NewEvent(executionId: execution.id, type: "git.commit_failed", at: now, data: ["error": .string("\(error)")])
        }
        logger.info("auto-commit", metadata: ["sessionId": "\(session.id)", "executionId": "\(execution.id)", "outcome": "\(event.type)"])
        do {
            try await commit(SessionChange(sessionId: session.id, events: [event]))
        } catch {
            logger.error("recording auto-commit failed", metadata: ["sessionId": "\(session.id)", "error": "\(String(reflecting: error))"])
        }
    }
}
