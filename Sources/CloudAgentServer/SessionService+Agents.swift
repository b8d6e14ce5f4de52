import CloudAgentCore
import CloudAgentProtocol

extension SessionService {
    /// What the runtime needs to run `execution`: the prompt, the agent as the registry resolved
    /// it, and the agent's own conversation to resume.
    func executeCommand(_ execution: Execution, session: SessionRecord) -> ExecuteCommand {
        ExecuteCommand(
            executionId: execution.id.rawValue, agent: session.spec.agent, prompt: execution.prompt,
            mode: execution.mode, model: execution.model, launch: agents.launch(for: session.spec.agent),
            conversationId: session.agentConversationId
        )
    }
}
