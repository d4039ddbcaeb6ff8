/** Reads a pipeline config file (YAML or JSON) and validates it with the same schema the workflow uses. */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { formatIssues, parseConfig } from '../config/config-issues.js';
import { pipelineConfigSchema, type PipelineConfig } from '../config/pipeline-config.js';

/** Thrown when a config file is unreadable or invalid; the message lists every problem. */
export class ConfigFileError extends Error {}

export function readConfigFile(file: string): { raw: unknown; config: PipelineConfig } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigFileError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  let raw: unknown;
  try {
    raw = file.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new ConfigFileError(
      `${file} is not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${(err as Error).message}`,
    );
  }
  const parsed = parseConfig(pipelineConfigSchema, raw);
  if (!parsed.ok) throw new ConfigFileError(`${file}: ${formatIssues('pipeline config', parsed.issues)}`);
  return { raw, config: parsed.data };
}
