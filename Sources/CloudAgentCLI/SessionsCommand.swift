import ArgumentParser
import CloudAgentCore
import Foundation
import NIOHTTP1
import NIOCore

/// What a new session is made of: the options of `sessions create` and `run`.
struct SessionSpecOptions: ParsableArguments {
    @Option(help: "The repository to work on: an https/ssh/file URL or a local path.")
    var repo: String?

    @Option(help: "An existing upstream branch to work on (default: a new branch session/<id>). Needs --repo.")
    var branch: String?

    @Option(name: .customLong("repo-token"), help: "A git credential for clone/fetch/push (kept like a secret).")
    var repoToken: String?

    @Option(help: "The agent (default scripted).")
    var agent: String?

    @Option(help: "Handed to the agent as its mode.")
    var mode: String?

    @Option(help: "Handed to the agent as its model.")
    var model: String?

    @Option(
        name: .customLong("env"),
        help: ArgumentHelp("An environment variable for the agent (repeatable); a bare NAME takes its value from this shell.", valueName: "NAME=VALUE"))
    var env: [String] = []

    @Option(
        name: .customLong("secret"),
        help: ArgumentHelp("Like --env, stored encrypted and never shown (repeatable); a bare NAME takes its value from this shell.", valueName: "NAME=VALUE"))
    var secrets: [String] = []

    @Option(
        name: .customLong("setup"),
        help: ArgumentHelp("A setup command run in the workspace before the runtime starts (repeatable, in order).", valueName: "command"))
    var setup: [String] = []

    @Flag(name: .customLong("auto-commit"), help: "Commit (and push) the workspace after each execution.")
    var autoCommit = false

    @Option(name: .customLong("idle-timeout"), help: ArgumentHelp("This session's idle timeout (e.g. 30s, 15m).", valueName: "duration"))
    var idleTimeout: String?

    @Option(name: .customLong("callback-url"), help: "POSTed to when an execution ends.")
    var callbackURL: String?

    @Option(name: .customLong("callback-header"), help: ArgumentHelp("A header of the callback (repeatable).", valueName: "NAME=VALUE"))
    var callbackHeaders: [String] = []

    @Option(help: "ask: the agent's permission requests wait for an answer (cloud-agent answer); auto (default): it uses its tools without asking.")
    var approvals: String?

    @Option(
        name: .customLong("max-cost-usd"),
        help: ArgumentHelp(
            "A budget in US dollars (e.g. 5 or 0.50): past it the agent waits for a go-ahead (--approvals ask) or is stopped.", valueName: "amount"))
    var maxCostUsd: String?

    @Option(
        name: .customLong("max-tokens"),
        help: ArgumentHelp("A budget in tokens (every kind), like --max-cost-usd; with both, the first reached counts.", valueName: "count"))
    var maxTokens: String?

    func validate() throws {
        if let approvals, approvals != "ask", approvals != "auto" { throw ValidationError("--approvals must be ask or auto") }
        _ = try BudgetText.body(cost: maxCostUsd, tokens: maxTokens)
        if branch != nil, repo == nil { throw ValidationError("--branch needs --repo") }
        if repoToken != nil, repo == nil { throw ValidationError("--repo-token needs --repo") }
        if !callbackHeaders.isEmpty, callbackURL == nil { throw ValidationError("--callback-header needs --callback-url") }
    }

    /// The body of `POST /v1/sessions`.
    func body(prompt: String) throws -> JSONValue {
        var body: [String: JSONValue] = ["prompt": .string(prompt)]
        if let repo {
            var spec: [String: JSONValue] = ["url": .string(repo)]
            if let branch { spec["branch"] = .string(branch) }
            if let repoToken { spec["token"] = .string(repoToken) }
            body["repo"] = .object(spec)
        }
        if let agent { body["agent"] = .string(agent) }
        if let mode { body["mode"] = .string(mode) }
        if let model { body["model"] = .string(model) }
        if !env.isEmpty { body["envVars"] = .object(try parsePairs(env, option: "--env").mapValues(JSONValue.string)) }
        if !secrets.isEmpty { body["secrets"] = .object(try parsePairs(secrets, option: "--secret").mapValues(JSONValue.string)) }
        if !setup.isEmpty { body["setupCommands"] = .array(setup.map(JSONValue.string)) }
        if autoCommit { body["autoCommit"] = true }
        if let approvals { body["approvals"] = .string(approvals) }
        if let budget = try BudgetText.body(cost: maxCostUsd, tokens: maxTokens) { body["budget"] = budget }
        if let idleTimeout { body["idleTimeoutMs"] = .number(Double(try parseDuration(idleTimeout, option: "--idle-timeout"))) }
        if let callbackURL {
            var callback: [String: JSONValue] = ["url": .string(callbackURL)]
            if !callbackHeaders.isEmpty {
                callback["headers"] = .object(try parsePairs(callbackHeaders, option: "--callback-header").mapValues(JSONValue.string))
            }
            body["callback"] = .object(callback)
        }
        return .object(body)
    }
}

/// How long a create may take: it clones the repo and runs up to 20 setup commands of 120 s.
let createTimeout = TimeAmount.minutes(45)

/// `cloud-agent sessions create|list|show|patch|delete`.
struct SessionsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sessions",
        abstract: "Prepare, list, show, change and delete sessions.",
        discussion: ExitStatus.summary,
        subcommands: [Create.self, List.self, Show.self, Patch.self, Delete.self]
    )

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Prepare a session (clone, setup, start its runtime) and print it. `initiate` it with `cloud-agent send`… or use `cloud-agent run`.",
            discussion: "PROMPT `-` reads the prompt from stdin. " + ExitStatus.summary
        )

        @OptionGroup var client: ClientOptions
        @OptionGroup var spec: SessionSpecOptions
        @Argument(help: "The prompt the first execution runs (`-` reads stdin).") var prompt: String

        func run() async throws {
            let api = try client.client()
            let answer = try await api.send(.POST, "/v1/sessions", body: try spec.body(prompt: try readPrompt(prompt)), timeout: createTimeout)
            let console = Console.shared
            if client.json { console.line(answer.line) } else { HumanViews(console: console).session(answer.json).forEach(console.line) }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List your sessions, newest first.")

        @OptionGroup var client: ClientOptions
        @Option(help: "At most this many (1–200, default 50).") var limit: Int?
        @Option(help: "Continue after this cursor (printed when there are more).") var cursor: String?

        func run() async throws {
            let api = try client.client()
            let path = "/v1/sessions" + APIClient.query([("limit", limit.map(String.init)), ("cursor", cursor)])
            let answer = try await api.send(.GET, path)
            let console = Console.shared
            if client.json {
                console.line(answer.line)
                return
            }
            HumanViews(console: console).sessionRows(answer.json["sessions"]?.arrayItems ?? []).forEach(console.line)
            if let next = answer.json["nextCursor"]?.stringValue {
                console.line(console.paint("more: cloud-agent sessions list --cursor \(next)", .dim))
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a session: its runtime, activity, idle deadline, latest execution and queue.", aliases: ["get"])

        @OptionGroup var client: ClientOptions
        @Argument(help: "The session id (agent_…).") var id: String

        func run() async throws {
            let api = try client.client()
            let answer = try await api.send(.GET, "/v1/sessions/\(APIClient.escape(id))")
            let console = Console.shared
            if client.json {
                console.line(answer.line)
                return
            }
            let views = HumanViews(console: console)
            views.session(answer.json).forEach(console.line)
            // What the agent waits for, with how to answer it.
            if (answer.json["pendingInput"]?.intValue ?? 0) > 0 {
                let listed = try await api.send(.GET, "/v1/sessions/\(APIClient.escape(id))/input-requests")
                for request in listed.json["requests"]?.arrayItems ?? [] where request["status"] == "pending" {
                    views.inputRequest(request, session: id).forEach(console.line)
                }
            }
            // The queued follow-ups, in the order they run.
            if (answer.json["queuedCount"]?.intValue ?? 0) > 0 {
                let queued = try await api.send(.GET, "/v1/sessions/\(APIClient.escape(id))/executions?status=queued")
                console.line(console.paint("queue", .bold))
                views.executionRows(queued.json["executions"]?.arrayItems ?? []).forEach(console.line)
            }
        }
    }

    struct Patch: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change a session. Before it is initiated: any field; after: only --idle-timeout and the budget (which apply at once).",
            discussion: """
                A collection option (--env, --secret, --setup, --callback-header) replaces the stored collection whole; so do \
                --max-cost-usd and --max-tokens the budget (give both to keep both limits). A new budget starts without raises, \
                and lets an agent waiting at the old one go on if the session's usage is under it. \(ExitStatus.summary)
                """
        )

        @OptionGroup var client: ClientOptions
        @Argument(help: "The session id (agent_…).") var id: String

        @Option(help: "A new prompt (`-` reads stdin).") var prompt: String?
        @Option(help: "A new agent.") var agent: String?
        @Flag(name: .customLong("clear-agent"), help: "Reset the agent to scripted.") var clearAgent = false
        @Option(help: "A new mode.") var mode: String?
        @Flag(name: .customLong("clear-mode"), help: "Clear the mode.") var clearMode = false
        @Option(help: "A new model.") var model: String?
        @Flag(name: .customLong("clear-model"), help: "Clear the model.") var clearModel = false
        @Option(help: "A new repository (replaces the old one, token included).") var repo: String?
        @Option(help: "The new repository's branch (with --repo).") var branch: String?
        @Option(name: .customLong("repo-token"), help: "The new repository's credential (with --repo).") var repoToken: String?
        @Flag(name: .customLong("clear-repo"), help: "Work without a repository.") var clearRepo = false
        @Option(name: .customLong("env"), help: ArgumentHelp("Replace the env vars (repeatable).", valueName: "NAME=VALUE")) var env: [String] = []
        @Flag(name: .customLong("clear-env"), help: "Remove every env var.") var clearEnv = false
        @Option(name: .customLong("secret"), help: ArgumentHelp("Replace the secrets (repeatable).", valueName: "NAME=VALUE")) var secrets: [String] = []
        @Flag(name: .customLong("clear-secrets"), help: "Remove every secret.") var clearSecrets = false
        @Option(name: .customLong("setup"), help: ArgumentHelp("Replace the setup commands (repeatable).", valueName: "command")) var setup: [String] = []
        @Flag(name: .customLong("clear-setup"), help: "Remove every setup command.") var clearSetup = false
        @Flag(inversion: .prefixedNo, help: "Commit (and push) after each execution.") var autoCommit: Bool?
        @Option(name: .customLong("idle-timeout"), help: ArgumentHelp("A new idle timeout (e.g. 30s, 15m); applies at once.", valueName: "duration"))
        var idleTimeout: String?
        @Flag(name: .customLong("clear-idle-timeout"), help: "Use the server's idle timeout.") var clearIdleTimeout = false
        @Option(name: .customLong("callback-url"), help: "A new completion callback URL.") var callbackURL: String?
        @Option(name: .customLong("callback-header"), help: ArgumentHelp("A header of the new callback (repeatable).", valueName: "NAME=VALUE"))
        var callbackHeaders: [String] = []
        @Flag(name: .customLong("clear-callback"), help: "Remove the callback.") var clearCallback = false
        @Option(name: .customLong("max-cost-usd"), help: ArgumentHelp("A new budget in US dollars (replaces the budget).", valueName: "amount"))
        var maxCostUsd: String?
        @Option(name: .customLong("max-tokens"), help: ArgumentHelp("A new budget in tokens (replaces the budget).", valueName: "count"))
        var maxTokens: String?
        @Flag(name: .customLong("clear-budget"), help: "Remove the budget.") var clearBudget = false

        func validate() throws {
            let conflicts: [(Bool, String)] = [
                (agent != nil && clearAgent, "--agent and --clear-agent"), (mode != nil && clearMode, "--mode and --clear-mode"),
                (model != nil && clearModel, "--model and --clear-model"), (repo != nil && clearRepo, "--repo and --clear-repo"),
                (!env.isEmpty && clearEnv, "--env and --clear-env"), (!secrets.isEmpty && clearSecrets, "--secret and --clear-secrets"),
                (!setup.isEmpty && clearSetup, "--setup and --clear-setup"),
                (idleTimeout != nil && clearIdleTimeout, "--idle-timeout and --clear-idle-timeout"),
                (callbackURL != nil && clearCallback, "--callback-url and --clear-callback"),
                ((maxCostUsd != nil || maxTokens != nil) && clearBudget, "--max-cost-usd/--max-tokens and --clear-budget"),
            ]
            if let conflict = conflicts.first(where: \.0) { throw ValidationError("\(conflict.1) contradict each other") }
            if (branch != nil || repoToken != nil), repo == nil { throw ValidationError("--branch and --repo-token need --repo") }
            if !callbackHeaders.isEmpty, callbackURL == nil { throw ValidationError("--callback-header needs --callback-url") }
            _ = try BudgetText.body(cost: maxCostUsd, tokens: maxTokens)
        }

        func body() throws -> JSONValue {
            var body: [String: JSONValue] = [:]
            if let prompt { body["prompt"] = .string(try readPrompt(prompt)) }
            if let agent { body["agent"] = .string(agent) } else if clearAgent { body["agent"] = .null }
            if let mode { body["mode"] = .string(mode) } else if clearMode { body["mode"] = .null }
            if let model { body["model"] = .string(model) } else if clearModel { body["model"] = .null }
            if let repo {
                var spec: [String: JSONValue] = ["url": .string(repo)]
                if let branch { spec["branch"] = .string(branch) }
                if let repoToken { spec["token"] = .string(repoToken) }
                body["repo"] = .object(spec)
            } else if clearRepo {
                body["repo"] = .null
            }
            if !env.isEmpty {
                body["envVars"] = .object(try parsePairs(env, option: "--env").mapValues(JSONValue.string))
            } else if clearEnv {
                body["envVars"] = [:]
            }
            if !secrets.isEmpty {
                body["secrets"] = .object(try parsePairs(secrets, option: "--secret").mapValues(JSONValue.string))
            } else if clearSecrets {
                body["secrets"] = [:]
            }
            if !setup.isEmpty { body["setupCommands"] = .array(setup.map(JSONValue.string)) } else if clearSetup { body["setupCommands"] = [] }
            if let autoCommit { body["autoCommit"] = .bool(autoCommit) }
            if let idleTimeout {
                body["idleTimeoutMs"] = .number(Double(try parseDuration(idleTimeout, option: "--idle-timeout")))
            } else if clearIdleTimeout {
                body["idleTimeoutMs"] = .null
            }
            if let callbackURL {
                var callback: [String: JSONValue] = ["url": .string(callbackURL)]
                if !callbackHeaders.isEmpty {
                    callback["headers"] = .object(try parsePairs(callbackHeaders, option: "--callback-header").mapValues(JSONValue.string))
                }
                body["callback"] = .object(callback)
            } else if clearCallback {
                body["callback"] = .null
            }
            if let budget = try BudgetText.body(cost: maxCostUsd, tokens: maxTokens) {
                body["budget"] = budget
            } else if clearBudget {
                body["budget"] = .null
            }
            guard !body.isEmpty else { throw CLIFailure.usage("nothing to change: give at least one option (see --help)") }
            return .object(body)
        }

        func run() async throws {
            let body = try body()
            let answer = try await client.client().send(.PATCH, "/v1/sessions/\(APIClient.escape(id))", body: body)
            let console = Console.shared
            if client.json { console.line(answer.line) } else { HumanViews(console: console).session(answer.json).forEach(console.line) }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a session: stop its runtime (rule deleted) and remove its workspace and data.")

        @OptionGroup var client: ClientOptions
        @Argument(help: "The session id (agent_…).") var id: String

        func run() async throws {
            try await client.client().send(.DELETE, "/v1/sessions/\(APIClient.escape(id))")
            let console = Console.shared
            if client.json {
                console.line(JSONText.encode(["sessionId": .string(id), "deleted": true] as [String: JSONValue]))
            } else {
                console.line("deleted \(id)")
            }
        }
    }
}
