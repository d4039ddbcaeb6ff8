#!/usr/bin/env node
// Launcher for the TypeScript CLI: registers tsx (so no build step is needed), then runs it.
import { register } from 'tsx/esm/api';

register();
await import('../src/cli/main.ts');
