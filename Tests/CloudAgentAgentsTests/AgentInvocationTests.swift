import CloudAgentAgents
import CloudAgentProtocol
import Foundation
import Testing

@Suite("Agent command lines")
struct AgentInvocationTests {
    func invocation(
        _ kind: AgentKind, prompt: String = "fix the bug", mode: String? = nil, model: String? = nil, conversation: String? = nil,
        arguments: [String]? = nil, environment: [String: String] = [:], approvals: String? = nil
    ) throws -> AgentInvocation {
        var command = ExecuteCommand(
            executionId: "exc_1", agent: kind.rawValue, prompt: prompt, mode: mode, model: model,
            launch: AgentLaunch(kind: kind.rawValue, binary: kind == .scripted ? nil : "/opt/bin/agent", arguments: arguments),
            conversationId: conversation
        )
        command.approvals = approvals
        return try AgentInvocations.invocation(for: command, runtimeExecutable: "/rt", scriptedArgument: "scripted-agent", environment: environment)
    }

    @Test("scripted: the runtime itself, interactive: the prompt as a JSON line on stdin, which stays open for the answers; no launch also means scripted")
    func scripted() throws {
        #expect(
            try invocation(.scripted)
                == AgentInvocation(
                    executable: "/rt", arguments: ["scripted-agent", "--interactive"], standardInput: #"{"prompt":"fix the bug"}"# + "\n",
                    answersOnStandardInput: true))
        let bare = ExecuteCommand(executionId: "exc_1", agent: "scripted", prompt: "say hi")
        #expect(
            try AgentInvocations.invocation(for: bare, runtimeExecutable: "/rt", scriptedArgument: "scripted-agent", environment: [:]).arguments == [
                "scripted-agent", "--interactive",
            ])
        #expect(
            ScriptedAgentInput.answerLine(requestId: "q1", decision: "answer", answer: "blue") == #"{"answer":"blue","decision":"answer","requestId":"q1"}"#
                + "\n")
    }

    @Test(
        "claude-code: print mode, stream-json both ways with its permission requests on stdio; bypassPermissions (auto), default (ask) or plan (read-only); model, --resume"
    )
    func claude() throws {
        let control = ["-p", "--output-format", "stream-json", "--verbose", "--input-format", "stream-json", "--permission-prompt-tool", "stdio"]
        let first = try invocation(.claudeCode)
        #expect(first.executable == "/opt/bin/agent")
        #expect(first.arguments == control + ["--permission-mode", "bypassPermissions"])
        #expect(
            first.standardInput
                == #"{"message":{"content":"fix the bug","role":"user"},"parent_tool_use_id":null,"session_id":"default","type":"user"}"# + "\n")
        #expect(first.answersOnStandardInput)
        #expect(first.defaultEnvironment["IS_SANDBOX"] == "1")
        #expect(try invocation(.claudeCode, approvals: "ask").arguments == control + ["--permission-mode", "default"])
        let follow = try invocation(.claudeCode, mode: "ask", model: "claude-sonnet-4-5", conversation: "0b6c-uuid", approvals: "ask")
        #expect(follow.arguments == control + ["--permission-mode", "plan", "--model", "claude-sonnet-4-5", "--resume=0b6c-uuid"])
    }

    @Test(
        "codex: the app server, its question tool on, initialize on stdin which stays open; the provider for OPENAI_BASE_URL; the thread, model, approvals and sandbox go over the protocol"
    )
    func codex() throws {
        let first = try invocation(.codex)
        #expect(first.arguments == ["app-server", "-c", "features.default_mode_request_user_input=true", "-c", "suppress_unstable_features_warning=true"])
        #expect(first.standardInput == CodexAppServerParser.initializeLine)
        #expect(first.standardInput.hasPrefix(#"{"id":1,"method":"initialize""#))
        #expect(first.answersOnStandardInput)
        let follow = try invocation(.codex, mode: "ask", model: "gpt-5", conversation: "thread-1", environment: ["OPENAI_BASE_URL": "http://127.0.0.1:9/v1"])
        #expect(follow.arguments.contains("model_provider=\"cloud-agent\""))
        #expect(follow.arguments.contains("model_providers.cloud-agent.base_url=\"http://127.0.0.1:9/v1\""))
        #expect(follow.arguments.contains("model_providers.cloud-agent.wire_api=\"responses\""))
        #expect(!follow.arguments.contains("thread-1") && !follow.arguments.contains("gpt-5"))

        // The steps after initialize, as the parser takes them.
        func thread(_ parser: inout CodexAppServerParser) -> String? {
            for case .reply(let line) in parser.parse(line: #"{"id":1,"result":{}}"#) where line.contains("thread/") { return line }
            return nil
        }
        var resumed = CodexAppServerParser(prompt: "p", resume: "thread-1", model: "gpt-5", asks: false, readOnly: true)
        let resume = try #require(thread(&resumed))
        #expect(resume.contains(#""method":"thread/resume""#) && resume.contains(#""threadId":"thread-1""#) && resume.contains(#""model":"gpt-5""#))
        #expect(resume.contains(#""approvalPolicy":"never""#) && resume.contains(#""sandbox":"read-only""#))
        var asking = CodexAppServerParser(prompt: "p", resume: nil, model: nil, asks: true, readOnly: true)
        #expect(try #require(thread(&asking)).contains(#""approvalPolicy":"on-request""#))
        // A thread Codex no longer knows: a new one, said in a log event.
        let fallback = resumed.parse(line: #"{"id":2,"error":{"code":-32600,"message":"no rollout found for thread id thread-1"}}"#)
        #expect(fallback.contains { if case .reply(let line) = $0 { line.contains(#""method":"thread/start""#) } else { false } })
        #expect(fallback.contains { if case .agent(let data) = $0 { data["message"]?.stringValue?.contains("could not be resumed") == true } else { false } })
    }

    @Test("codex: an MCP tool call's approval is a permission for mcp__SERVER__TOOL; an MCP server's form a question; a URL is declined")
    func codexElicitations() throws {
        func parse(_ line: String) -> [AgentOutputItem] {
            var parser = CodexAppServerParser(prompt: "p", resume: nil, model: nil, asks: true, readOnly: false)
            return parser.parse(line: line)
        }
        let approval = parse(
            #"{"method":"mcpServer/elicitation/request","id":4,"params":{"threadId":"t","turnId":"u","serverName":"notes","mode":"form","_meta":{"codex_approval_kind":"mcp_tool_call","tool_params":{"text":"hi"}},"message":"Allow the notes MCP server to run tool \"remember\"?","requestedSchema":{"type":"object","properties":{}}}}"#
        )
        guard case .inputRequest(let permission)? = approval.first else { throw AgentInvocationError("no request: \(approval)") }
        #expect(permission.data["kind"] == "permission")
        #expect(permission.data["tool"] == "mcp__notes__remember")
        #expect(permission.data["input"] == ["text": "hi"])
        #expect(
            permission.reply.line(decision: "allow", optionId: nil, answer: nil) == #"{"id":4,"result":{"_meta":null,"action":"accept","content":{}}}"# + "\n")
        #expect(
            permission.reply.line(decision: "deny", optionId: nil, answer: nil) == #"{"id":4,"result":{"_meta":null,"action":"decline","content":null}}"# + "\n"
        )

        let form = parse(
            #"{"method":"mcpServer/elicitation/request","id":5,"params":{"threadId":"t","turnId":"u","serverName":"notes","mode":"form","_meta":null,"message":"Which colour?","requestedSchema":{"type":"object","properties":{"colour":{"type":"string"}}}}}"#
        )
        guard case .inputRequest(let question)? = form.first else { throw AgentInvocationError("no request: \(form)") }
        #expect(question.data["kind"] == "question")
        #expect(question.data["question"] == "Which colour?")
        #expect(
            question.reply.line(decision: "answer", optionId: nil, answer: "green")
                == #"{"id":5,"result":{"_meta":null,"action":"accept","content":{"colour":"green"}}}"# + "\n")

        let url = parse(
            #"{"method":"mcpServer/elicitation/request","id":6,"params":{"threadId":"t","turnId":null,"serverName":"notes","mode":"url","_meta":null,"message":"Log in","url":"https://example.com/login","elicitationId":"e1"}}"#
        )
        #expect(url.contains(.reply(#"{"id":6,"result":{"_meta":null,"action":"decline","content":null}}"# + "\n")))
    }

    @Test("codex: answers to its approvals (accept, decline, cancel) and to its questions (answers by question id, header or position; none when declined)")
    func codexAnswers() throws {
        let approval = AgentReply.codex(requestId: "0", id: 0, kind: .approval)
        #expect(approval.line(decision: "allow", optionId: nil, answer: nil) == #"{"id":0,"result":{"decision":"accept"}}"# + "\n")
        #expect(approval.line(decision: "deny", optionId: nil, answer: nil) == #"{"id":0,"result":{"decision":"decline"}}"# + "\n")
        #expect(approval.line(decision: "timeout", optionId: nil, answer: nil) == #"{"id":0,"result":{"decision":"decline"}}"# + "\n")
        #expect(approval.line(decision: "cancelled", optionId: nil, answer: nil) == #"{"id":0,"result":{"decision":"cancel"}}"# + "\n")
        let questions: [JSONValue] = [
            ["id": "colour", "header": "Colour", "question": "Which colour?"], ["id": "size", "header": "Size", "question": "How big?"],
        ]
        let question = AgentReply.codex(requestId: "3", id: 3, kind: .userInput(questions))
        #expect(
            question.line(decision: "answer", optionId: nil, answer: "blue")
                == #"{"id":3,"result":{"answers":{"colour":{"answers":["blue"]},"size":{"answers":["blue"]}}}}"# + "\n")
        #expect(
            question.line(decision: "answer", optionId: nil, answer: ["Colour": "red", "2": ["S", "M"]])
                == #"{"id":3,"result":{"answers":{"colour":{"answers":["red"]},"size":{"answers":["S","M"]}}}}"# + "\n")
        #expect(question.line(decision: "deny", optionId: nil, answer: nil) == #"{"id":3,"result":{"answers":{}}}"# + "\n")
    }

    @Test(
        "opencode and kilo over ACP: `acp`, nothing on stdin (the prompt, mode, model and conversation go over the protocol); an agents file's ACP agent: its own arguments"
    )
    func acpAgents() throws {
        let opencode = try invocation(.opencode, mode: "architect", model: "anthropic/claude", conversation: "ses_1")
        #expect(opencode.arguments == ["acp"])
        #expect(opencode.standardInput == "")
        #expect(try invocation(.kilo).arguments == ["acp"])
        #expect(try invocation(.acp, arguments: ["--stdio", "-v"]).arguments == ["--stdio", "-v"])
        #expect(try invocation(.acp).arguments == [])
    }

    @Test("command: placeholders replaced, a lone placeholder without a value left out, prompt on stdin unless in the template")
    func command() throws {
        let inline = try invocation(.command, model: nil, arguments: ["--message", "{prompt}", "--model", "{model}", "--tag=x{mode}y"])
        #expect(inline.arguments == ["--message", "fix the bug", "--model", "--tag=xy"])
        #expect(inline.standardInput == "")
        let piped = try invocation(.command, model: "m1", conversation: "c1", arguments: ["{model}", "--resume={conversationId}"])
        #expect(piped.arguments == ["m1", "--resume=c1"])
        #expect(piped.standardInput == "fix the bug")
    }

    @Test("a real agent without a binary is an error, not a crash")
    func missingBinary() {
        let command = ExecuteCommand(executionId: "exc_1", agent: "codex", prompt: "p", launch: AgentLaunch(kind: "codex"))
        #expect(throws: AgentInvocationError.self) {
            try AgentInvocations.invocation(for: command, runtimeExecutable: "/rt", scriptedArgument: "s", environment: [:])
        }
    }
}

@Suite("Agents file")
struct AgentsFileTests {
    @Test("declarations are read and checked, naming the entry")
    func parse() throws {
        let json =
            #"{"agents": [{"name": "aider", "command": ["aider", "--message", "{prompt}"]}, {"name": "bot", "command": ["/opt/bot"], "output": "jsonl", "version": "1.2"}]}"#
        let agents = try AgentsFile.parse(Data(json.utf8))
        #expect(agents.map(\.name) == ["aider", "bot"])
        #expect(agents[0].output == .text)
        #expect(agents[0].arguments == ["--message", "{prompt}"])
        #expect(agents[1].output == .jsonl)
        #expect(agents[1].version == "1.2")
        for (bad, expected) in [
            (#"{"agents": [{"name": "codex", "command": ["x"]}]}"#, "built-in"),
            (#"{"agents": [{"name": "Bad Name", "command": ["x"]}]}"#, "agents[0].name"),
            (#"{"agents": [{"name": "a", "command": []}]}"#, "agents[0].command"),
            (#"{"agents": [{"name": "a", "command": ["x"]}, {"name": "a", "command": ["y"]}]}"#, "twice"),
            (#"{"agents": [{"name": "a", "command": ["x"], "output": "xml"}]}"#, "agents[0].output"),
            (#"[1, 2]"#, "not an agents file"),
        ] {
            #expect {
                try AgentsFile.parse(Data(bad.utf8))
            } throws: { error in
                "\(error)".contains(expected)
            }
        }
    }
}

@Suite("Secret mask")
struct SecretMaskTests {
    @Test("secret values are masked wherever they appear, the longest first; very short values are left alone")
    func masks() {
        let mask = SecretMask(values: ["sk-live-123456", "sk-live-123456-extended", "ab", ""])
        #expect(mask.apply(#"{"type":"text","text":"key=sk-live-123456-extended and sk-live-123456"}"#) == #"{"type":"text","text":"key=*** and ***"}"#)
        #expect(mask.apply("nothing secret, ab") == "nothing secret, ab")
        #expect(SecretMask(values: ["ab"]).isEmpty)
    }
}
