// Lint: typed rules everywhere; workflows/ and what they import (src/config/) must stay deterministic, so Node
// built-ins are banned there.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const nodeBuiltins = [
  'fs',
  'path',
  'os',
  'child_process',
  'net',
  'http',
  'https',
  'crypto',
  'url',
  'process',
  'timers',
  'worker_threads',
  'stream',
  'readline',
  'dns',
  'events',
  'util',
];

export default tseslint.config(
  { ignores: ['node_modules/', 'src/gen/', 'python-worker/', '.state/', '.tools/', 'coverage/', 'bench/results/'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: {
        projectService: { allowDefaultProject: ['*.js', 'bin/*.js'] },
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['workflows/**/*.ts', 'src/config/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: nodeBuiltins.flatMap((name) => [
            { name, message: 'workflows must be deterministic: no Node built-ins (use an activity)' },
            { name: `node:${name}`, message: 'workflows must be deterministic: no Node built-ins (use an activity)' },
          ]),
        },
      ],
    },
  },
  {
    files: ['**/*.js'],
    ...tseslint.configs.disableTypeChecked,
  },
);
