from impactin_pipelines.cli import main

main()
